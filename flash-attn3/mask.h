// Visibility policy: causal, sliding window and attention chunk as one object.
//
// Query row i of a sequence with sq rows and sk keys sits at key position p = i + sk - sq
// (bottom-right alignment). Row i sees exactly the keys j with lo(i) <= j <= hi(i):
//   window (wl, wr):   p - wl <= j <= p + wr      (-1 = unbounded side; causal is wr = 0)
//   chunk C > 0:       c0 <= j < c0 + C, c0 = floor(p / C) * C
//   always:            0 <= j < sk
// Both bounds are non-decreasing in i, which is what lets a tile of rows [r0, r1] iterate
// the key range [lo(r0), hi(r1)] and skip the per-element test for interior key blocks
// (key_blocks: the one rule both kernel families use).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SGL_FA3_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SGL_FA3_HOST_DEVICE inline
#endif

namespace sgl_fa3 {

// Key blocks of a tile: [n_block_min, n_block_max) holds every key its rows see, and blocks
// first_unmasked .. last_unmasked are seen whole by every row (no per-element test).
struct KeyBlocks {
  int n_block_min, n_block_max;
  int first_unmasked, last_unmasked;
  SGL_FA3_HOST_DEVICE bool has_keys() const { return n_block_max > n_block_min; }
  SGL_FA3_HOST_DEVICE bool needs_mask(int n) const { return n < first_unmasked || n > last_unmasked; }
};

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
  // Key blocks (block_n keys each) of a tile whose attending rows are queries first_q .. last_q
  // (any_attend false: none attends, no keys). Every row sees [lo(last_q), hi(first_q)]: block n
  // needs no test when n block_n >= lo(last_q) and (n + 1) block_n - 1 <= hi(first_q), and only
  // if all_attend (every row of the tile attends; rows past seqused_q see nothing).
  SGL_FA3_HOST_DEVICE KeyBlocks key_blocks(int first_q, int last_q, bool any_attend, bool all_attend,
                                           int block_n) const {
    const int key_lo = any_attend ? lo(first_q) : 0;
    const int key_hi = any_attend ? hi(last_q) : -1;
    KeyBlocks b;
    b.n_block_min = key_lo / block_n;
    b.n_block_max = key_hi >= key_lo ? key_hi / block_n + 1 : b.n_block_min;
    b.first_unmasked = all_attend ? (lo(last_q) + block_n - 1) / block_n : 1;
    b.last_unmasked = all_attend ? floor_div(hi(first_q) + 1, block_n) - 1 : 0;
    return b;
  }
};

}  // namespace sgl_fa3
