// Hopper epilogue: normalised O through shared memory to global memory with 16-byte stores, and
// the LSE of each row. Each consumer group writes its own 64 rows (no CTA-wide barrier).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "../params.h"
#include "mainloop.cuh"
#include "tile.cuh"
#include "traits.cuh"

namespace sgl_fa3::sm90 {

using namespace cute;

template <class Traits>
struct Epilogue {
  using Element = typename Traits::Element;
  using Work = TileWork<Traits::kBlockM, Traits::kBlockN>;
  static constexpr int kBlockM = Traits::kBlockM, kDV = Traits::kDV;

  // o: this thread's (unnormalised) accumulator; o_scale / lse: per row of the thread.
  template <class FragO, int kRows>
  static __device__ void store(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                               int thread_idx, FragO& o, const float (&o_scale)[kRows], const float (&lse)[kRows]) {
    typename Traits::TiledMmaPV mma_pv;
    auto thr = mma_pv.get_thread_slice(thread_idx);
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < size<1>(o_rc); ++j) o_rc(i, j) *= o_scale[i];
    Element* o_smem = Traits::kOInQ ? smem.q.data() : smem.o.data();
    Tensor sO = make_tensor(make_smem_ptr(o_smem), typename Traits::SmemLayoutO{});  // (kBlockM, kDV)
    Tensor tOsO = thr.partition_C(sO);
    Tensor o_cast = make_tensor_like<Element>(o);
    convert_fragment(o, o_cast);
    const int group = thread_idx / 128, t = thread_idx % 128;
    // The group's previous O (when O has its own bytes) has been read by every thread.
    if constexpr (!Traits::kOInQ) cutlass::arch::NamedBarrier::sync(128, int(BarrierId::kEpilogue) + group);
    copy(o_cast, tOsO);

    // LSE: the first thread of each quad holds its rows' values.
    Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDV>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    if (thread_idx % 4 == 0) {
      float* lse_out = p.lse + w.seq.lse_offset + int64_t(w.head) * p.lse_head_stride;
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int row = w.row0 + get<0>(coords_rc(i, 0));
        if (row <= w.last_row) lse_out[row] = lse[i];
      }
    }

    cutlass::arch::NamedBarrier::sync(128, int(BarrierId::kEpilogue) + group);
    // The group's 64 rows, 8 columns (16 bytes) per access, consecutive threads along a row.
    Element* o_out = static_cast<Element*>(p.o) + w.seq.o_offset + int64_t(w.head) * p.o_head_stride;
    constexpr int kChunksPerRow = kDV / 8;
#pragma unroll 4
    for (int c = t; c < 64 * kChunksPerRow; c += 128) {
      const int r = group * 64 + c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      const int row = w.row0 + r;
      if (row <= w.last_row)
        *reinterpret_cast<uint4*>(o_out + int64_t(row) * p.o_row_stride + col) =
            *reinterpret_cast<const uint4*>(&sO(r, col));
    }
  }

  // Rows of a tile that sees no key: O = 0, LSE = the sink (-inf without sinks).
  static __device__ void store_empty(const FwdParams& p, const Work& w, int thread_idx, float sink) {
    const int group = thread_idx / 128, t = thread_idx % 128;
    Element* o_out = static_cast<Element*>(p.o) + w.seq.o_offset + int64_t(w.head) * p.o_head_stride;
    constexpr int kChunksPerRow = kDV / 8;
    for (int c = t; c < 64 * kChunksPerRow; c += 128) {
      const int row = w.row0 + group * 64 + c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      if (row <= w.last_row) *reinterpret_cast<uint4*>(o_out + int64_t(row) * p.o_row_stride + col) = uint4{0, 0, 0, 0};
    }
    const int row = w.row0 + group * 64 + t;
    if (t < 64 && row <= w.last_row) p.lse[w.seq.lse_offset + int64_t(w.head) * p.lse_head_stride + row] = sink;
  }
};

}  // namespace sgl_fa3::sm90
