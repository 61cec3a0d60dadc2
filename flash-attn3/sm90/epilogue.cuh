// Hopper epilogue: normalised O through shared memory to global memory, and the LSE of each row.
// Each consumer group writes its own 64 rows (no CTA-wide barrier): one thread of the group
// issues TMA stores of its rows and moves on (on two-group tiles with TMA loads, a store warp of
// the producer group issues them and writes the LSE: serve), or (the rows of a packed sequence's
// last tile, which a TMA box would carry into the next sequence, and packed GQA rows, which
// belong to several heads) the group copies them out with 16-byte stores. On the absorbed-MLA
// tile each group writes its half of O's columns straight from registers.
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
  using Work = TileWork<Traits::kBlockM, Traits::kBlockN, Traits::kQv>;
  static constexpr int kBlockM = Traits::kBlockM, kDV = Traits::kDV, kDVGroup = Traits::kDVGroup;
  static constexpr int kBoxCols = Traits::kOBoxCols;

  // Row r of the tile in o: query w.query(r) of head w.head(r).
  static __device__ Element* o_row(const FwdParams& p, const Work& w, int r) {
    return static_cast<Element*>(p.o) + w.seq.o_offset + int64_t(w.head(r)) * p.o_head_stride +
           int64_t(w.query(r)) * p.o_row_stride;
  }
  // Row r's index into lse and into the split-KV partials (params.h).
  static __device__ int64_t lse_index(const FwdParams& p, const Work& w, int r) {
    return w.seq.lse_offset + int64_t(w.head(r)) * p.lse_head_stride + w.query(r);
  }
  static __device__ float* lse_entry(const FwdParams& p, const Work& w, int r) { return p.lse + lse_index(p, w, r); }
  // Split-KV partials leave the sink to the combine.
  static __device__ float sink_of(const FwdParams& p, const Work& w, int r) {
    return p.sinks && !p.o_partial ? p.sinks[w.head(r)] : -INFINITY;
  }
  // Split-KV (absorbed-MLA tile): row r's fp32 partial O and its LSE slot for this split.
  static __device__ float* o_partial_row(const FwdParams& p, const Work& w, int r) {
    return p.o_partial + (int64_t(w.split) * p.lse_rows + lse_index(p, w, r)) * kDV;
  }
  static __device__ float* lse_partial_entry(const FwdParams& p, const Work& w, int r) {
    return p.lse_partial + int64_t(w.split) * p.lse_rows + lse_index(p, w, r);
  }

  // The sink logit of each of this thread's accumulator rows (-inf without sinks).
  template <int kRows>
  static __device__ void row_sinks(const FwdParams& p, const Work& w, int thread_idx, float (&sink)[kRows]) {
    auto thr = typename Traits::TiledMmaPV{}.get_thread_slice(thread_idx);
    Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDV>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
#pragma unroll
    for (int i = 0; i < kRows; ++i) sink[i] = sink_of(p, w, w.row0 + get<0>(coords_rc(i, 0)));
  }

  // The output fragment of an accumulator o: the same elements in the output dtype.
  template <class FragO>
  using FragOut = decltype(make_tensor_like<Element>(std::declval<FragO&>()));

  // out = o (this thread's unnormalised accumulator) times its rows' o_scale, in the output dtype.
  template <class FragO, int kRows>
  static __device__ void normalise(FragO& o, const float (&o_scale)[kRows], FragOut<FragO>& out) {
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
    scale_rows(o_rc, o_scale);
    convert_fragment(o, out);
  }

  // The group's 64 rows of O (TMA boxes of (64, kBoxCols)) from shared memory to the tensor,
  // issued by one thread: rows 64 row_block.. of head `head` of batch row `batch` (0 for packed
  // sequences, which start at row q_start).
  static __device__ void issue_store(const FwdParams& p, const TmaDescriptors<Traits>& tma, Element* o_smem,
                                     int group, int q_start, int head, int batch, int row_block) {
    Tensor mO = tma.o.get_tma_tensor(make_shape(p.q_tensor_rows, int(kDV), p.num_heads, p.q_tensor_batch));
    Tensor gO = local_tile(domain_offset(make_coord(q_start, _0{}), mO(_, _, head, batch)), Shape<_64, Int<kBoxCols>>{},
                           make_coord(row_block, _));  // (64, kBoxCols, column blocks)
#pragma unroll
    for (int c = 0; c < kDV / kBoxCols; ++c) {
      constexpr int kBoxElems = cosize_v<typename Traits::SmemLayoutOBox>;
      Tensor sBox = make_tensor(make_smem_ptr(o_smem + (c * Traits::kConsumerGroups + group) * kBoxElems),
                                typename Traits::SmemLayoutOBox{});
      auto part = tma_partition(tma.o, _0{}, Layout<_1>{}, group_modes<0, 2>(sBox), group_modes<0, 2>(gO(_, _, c)));
      copy(tma.o, get<1>(part), get<0>(part));
    }
    tma_store_arrive();
  }

  // Whether a warp of the producer group stores O (serve): on the tiles that stage O apart and
  // defer its epilogue, when the K/V loads leave that group's warps 1-3 idle (TMA, not gathers).
  static __host__ __device__ bool has_store_warp(bool whole_producer_group) {
    return Traits::kDeferEpilogue && !whole_producer_group;
  }

  // out: this thread's normalised output fragment (normalise); lse: per row of the thread.
  // store_warp (has_store_warp): the O-store warp takes the group's TMA stores and LSE (hand-off
  // o_handoffs of the group).
  template <class Frag, int kRows>
  static __device__ void store(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                               typename Traits::SharedStorage& smem, const Work& w, int thread_idx,
                               const Frag& out, const float (&lse)[kRows], bool store_warp, int& o_handoffs) {
    typename Traits::TiledMmaPV mma_pv;
    auto thr = mma_pv.get_thread_slice(thread_idx);
    Element* o_smem = Traits::kOInQ ? smem.q.data() : smem.o.data();
    Tensor sO = make_tensor(make_smem_ptr(o_smem), typename Traits::SmemLayoutO{});  // (kBlockM, kDV)
    const int group = thread_idx / 128, t = thread_idx % 128;
    const bool issuer = t == 0;
    // The group's previous O (when O has its own bytes) has been read: by the TMA store that the
    // store warp or this group's issuer waited for, or by every thread.
    if constexpr (!Traits::kOInQ) {
      if (store_warp) {
        smem.o_empty[group].wait((o_handoffs & 1) ^ 1);
      } else {
        if (issuer) tma_store_wait<0>();
        cutlass::arch::NamedBarrier::sync(128, int(BarrierId::kEpilogue) + group);
      }
    }
    if constexpr (Traits::kOInQ) {
      copy(out, thr.partition_C(sO));
    } else {
      // stmatrix: four 8 x 8 matrices (16-byte rows) per instruction, a quarter of the stores of
      // element pairs. Not with O in Q's bytes: there it moved d256's register allocation to 4
      // more local loads per key block (6 against 2; d192 unchanged either way).
      auto copy_o = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_pv);
      auto thr_copy = copy_o.get_thread_slice(thread_idx);
      copy(copy_o, thr_copy.retile_S(out), thr_copy.partition_D(sO));
    }
    cutlass::arch::fence_view_async_shared();  // visible to the TMA unit

    // Batched rows past the tensor's end are clipped by the TMA unit; packed rows must stay
    // within their sequence.
    const bool packed = p.cu_seqlens_q != nullptr;
    const bool tma_rows = !p.pack_gqa && (!packed || w.row0 + 64 * (group + 1) <= w.seq.rows_q);
    // LSE: the first thread of each quad holds its rows' values.
    Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDV>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    if (store_warp && tma_rows) {  // (pack_gqa has no store warp: its producers copy Q rows)
      if (thread_idx % 4 == 0) {
#pragma unroll
        for (int i = 0; i < kRows; ++i) smem.o_lse[get<0>(coords_rc(i, 0))] = lse[i];
      }
      if (issuer) {
        const int row0 = w.row0 + 64 * group;
        smem.o_job[group] = OStoreJob{w.seq.lse_offset + int64_t(w.head0) * p.lse_head_stride + row0,
                                      OStoreJob::kStore, max(min(w.last_row - row0 + 1, 64), 0), w.seq.q_start,
                                      w.head0, packed ? 0 : w.batch, w.row0 / 64 + group};
      }
      smem.o_full[group].arrive();
      ++o_handoffs;
      return;
    }
    if (thread_idx % 4 == 0) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int row = w.row0 + get<0>(coords_rc(i, 0));
        if (row <= w.last_row) *lse_entry(p, w, row) = lse[i];
      }
    }

    cutlass::arch::NamedBarrier::sync(128, int(BarrierId::kEpilogue) + group);
    if (tma_rows) {
      if (issuer) {
        issue_store(p, tma, o_smem, group, w.seq.q_start, w.head0, packed ? 0 : w.batch, w.row0 / 64 + group);
        // O staged in Q's bytes: the next Q may only land there once the store has read them.
        if constexpr (Traits::kOInQ) tma_store_wait<0>();
      }
      return;
    }
    // The group's 64 rows, 8 columns (16 bytes) per access, consecutive threads along a row.
    constexpr int kChunksPerRow = kDV / 8;
#pragma unroll 4
    for (int c = t; c < 64 * kChunksPerRow; c += 128) {
      const int r = group * 64 + c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      const int row = w.row0 + r;
      if (row <= w.last_row)
        *reinterpret_cast<uint4*>(o_row(p, w, row) + col) = *reinterpret_cast<const uint4*>(&sO(r, col));
    }
    if (store_warp) hand_back(smem, group, issuer, OStoreJob::kRelease, o_handoffs);
  }

  // A consumer group hands the O buffer to the store warp with nothing to store: after its own
  // row stores (kRelease) or after its last tile (kExit).
  static __device__ void hand_back(typename Traits::SharedStorage& smem, int group, bool issuer, int kind,
                                   int& o_handoffs) {
    if (kind == OStoreJob::kExit) smem.o_empty[group].wait((o_handoffs & 1) ^ 1);
    if (issuer) smem.o_job[group].kind = kind;
    smem.o_full[group].arrive();
    ++o_handoffs;
  }

  // The O-store warp (one producer warp, Traits::kDeferEpilogue tiles): takes each group's
  // staged rows in turn (every group hands over the same tiles), issues their TMA stores, writes
  // their LSE, and returns the buffer once the store has read it. Off the consumers' path
  // between two tiles.
  static __device__ void serve(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                               typename Traits::SharedStorage& smem, int lane) {
    if constexpr (Traits::kDeferEpilogue) {
      for (int h = 0;; ++h) {
        bool exit = false;
#pragma unroll
        for (int group = 0; group < Traits::kConsumerGroups; ++group) {
          smem.o_full[group].wait(h & 1);
          const OStoreJob& job = smem.o_job[group];
          exit = job.kind == OStoreJob::kExit;
          if (job.kind == OStoreJob::kStore) {
            if (lane == 0) issue_store(p, tma, smem.o.data(), group, job.q_start, job.head, job.batch, job.row_block);
            for (int r = lane; r < job.rows; r += 32) p.lse[job.lse_row0 + r] = smem.o_lse[64 * group + r];
            if (lane == 0) tma_store_wait<0>();
          }
          smem.o_empty[group].arrive();  // every lane, after its own reads (lane 0: the store's too)
        }
        if (exit) return;
      }
    }
  }
  // Absorbed-MLA tile: this group's (64, dv / 2) accumulator o times o_scale, two adjacent
  // columns per 4-byte store (a quad writes 16 contiguous bytes of a row), or with split-KV per
  // 8-byte fp32 store into the split's partials; group 0 also writes the LSE.
  template <class FragO, int kRows>
  static __device__ void store_split_dv(const FwdParams& p, const Work& w, int thread_idx, FragO& o,
                                        const float (&o_scale)[kRows], const float (&lse)[kRows]) {
    const int group = thread_idx / 128, t = thread_idx % 128;
    auto thr = typename Traits::TiledMmaPV{}.get_thread_slice(t);
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
    Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDVGroup>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    cutlass::NumericArrayConverter<Element, float, 2> cvt;
    const bool partial = p.o_partial != nullptr;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int row = w.row0 + get<0>(coords_rc(i, 0));
      if (row > w.last_row) continue;
      if (partial) {
        float* out = o_partial_row(p, w, row) + group * kDVGroup;
#pragma unroll
        for (int j = 0; j < size<1>(o_rc); j += 2)  // columns j, j + 1 of the view are adjacent
          *reinterpret_cast<float2*>(out + get<1>(coords_rc(i, j))) =
              make_float2(o_rc(i, j) * o_scale[i], o_rc(i, j + 1) * o_scale[i]);
        if (group == 0 && t % 4 == 0) *lse_partial_entry(p, w, row) = lse[i];
        continue;
      }
      Element* out = o_row(p, w, row) + group * kDVGroup;
#pragma unroll
      for (int j = 0; j < size<1>(o_rc); j += 2) {
        const cutlass::Array<float, 2> pair{o_rc(i, j) * o_scale[i], o_rc(i, j + 1) * o_scale[i]};
        *reinterpret_cast<cutlass::Array<Element, 2>*>(out + get<1>(coords_rc(i, j))) = cvt(pair);
      }
      if (group == 0 && t % 4 == 0) *lse_entry(p, w, row) = lse[i];
    }
  }

  // Before the CTA exits: its last TMA stores have read shared memory.
  static __device__ void drain(int thread_idx) {
    if (thread_idx % 128 == 0) tma_store_wait<0>();
  }

  // Rows of a tile that sees no key: O = 0, LSE = the row's sink (-inf without sinks; a split's
  // partials: 0 and -inf). Each group writes its 64 rows, or on the absorbed-MLA tile its half
  // of the columns (group 0 the LSE).
  static __device__ void store_empty(const FwdParams& p, const Work& w, int thread_idx) {
    const int group = thread_idx / 128, t = thread_idx % 128;
    const int row_base = w.row0 + (Traits::kQv ? 0 : group * 64), col_base = Traits::kQv ? group * kDVGroup : 0;
    const bool partial = p.o_partial != nullptr;
    constexpr int kChunksPerRow = kDVGroup / 8;
    for (int c = t; c < 64 * kChunksPerRow; c += 128) {
      const int row = row_base + c / kChunksPerRow, col = col_base + (c % kChunksPerRow) * 8;
      if (row > w.last_row) continue;
      if (partial) {
        float4* out = reinterpret_cast<float4*>(o_partial_row(p, w, row) + col);
        out[0] = out[1] = make_float4(0.f, 0.f, 0.f, 0.f);
      } else {
        *reinterpret_cast<uint4*>(o_row(p, w, row) + col) = uint4{0, 0, 0, 0};
      }
    }
    const int row = row_base + t;
    if (t < 64 && row <= w.last_row && (!Traits::kQv || group == 0))
      *(partial ? lse_partial_entry(p, w, row) : lse_entry(p, w, row)) = sink_of(p, w, row);
  }
};

}  // namespace sgl_fa3::sm90
