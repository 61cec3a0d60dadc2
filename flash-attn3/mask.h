// Visibility policy: causal, sliding window and attention chunk as one object.
//
// Query row i of a sequence with sq rows and sk keys sits at key position p = i + sk - sq
// (bottom-right alignment). Row i sees exactly the keys j with lo(i) <= j <= hi(i):
//   window (wl, wr):   p - wl <= j <= p + wr      (-1 = unbounded side; causal is wr = 0)
//   chunk C > 0:       c0 <= j < c0 + C, c0 = floor(p / C) * C
//   always:            0 <= j < sk
// Both bounds are non-decreasing in i, which is what lets a tile of rows [r0, r1] iterate
// the key range [lo(r0), hi(r1)] and skip the per-element test for interior key blocks.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SGL_FA3_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SGL_FA3_HOST_DEVICE inline
#endif

namespace sgl_fa3 {

struct MaskPolicy {
  int seqlen_q, seqlen_k;
  int window_left, window_right;  // -1 = unbounded
  int chunk;                      // 0 = off

  SGL_FA3_HOST_DEVICE static int floor_div(int a, int b) {
    const int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
  }
  SGL_FA3_HOST_DEVICE int key_pos(int row) const { return row + seqlen_k - seqlen_q; }

  // First visible key of query row `row` (may exceed hi(row): then the row sees nothing).
  SGL_FA3_HOST_DEVICE int lo(int row) const {
    const int p = key_pos(row);
    int lo = 0;
    if (window_left >= 0 && p - window_left > lo) lo = p - window_left;
    if (chunk > 0) {
      const int c0 = floor_div(p, chunk) * chunk;
      if (c0 > lo) lo = c0;
    }
    return lo;
  }
  // Last visible key of query row `row` (may be negative).
  SGL_FA3_HOST_DEVICE int hi(int row) const {
    const int p = key_pos(row);
    int hi = seqlen_k - 1;
    if (window_right >= 0 && p + window_right < hi) hi = p + window_right;
    if (chunk > 0) {
      const int c_end = floor_div(p, chunk) * chunk + chunk - 1;
      if (c_end < hi) hi = c_end;
    }
    return hi;
  }
};

}  // namespace sgl_fa3
