// Hopper main loop: TMA loads (producer) and wgmma + online softmax (consumers).
//
// Producer: Q into the next of its kQStages buffers (TMA from one thread, or the producer warp
// group's gather of packed GQA rows), then for key blocks n = n_max - 1 down to n_min, K_n and V_n
// into the next stage of their own pipelines (TMA from one thread, or the warp group's gather of
// paged rows; K and V are separate so Q K^T of a block can start before its V has landed). Blocks are walked high to low: the causal / window edge comes first, so only
// the first and last few blocks take the per-element mask.
//
// Consumer warp group g (rows 64 g .. 64 g + 63 of the tile), per key block, software-pipelined:
//   issue S_n = Q K_n^T           (async wgmma, smem x smem)
//   rescale O by block n + 1's factor, if a row's max moved (overlaps the Q K^T wgmma)
//   issue O  += P_{n+1} V_{n+1}   (async wgmma, registers x smem; the previous block's P)
//   wait S_n; release K_n; mask, online softmax of S_n (overlaps the P.V wgmma)
//   wait P.V; release V_{n+1}; P_n = bf16(S_n)
// so the tensor cores work on P.V while the softmax of the next block runs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_conversion.h>

#include "../params.h"
#include "softmax.cuh"
#include "tile.cuh"
#include "traits.cuh"

namespace sgl_fa3::sm90 {

using namespace cute;

// TMA descriptors of one call (built on the host for the call's pointers, shapes and strides).
template <class Traits>
struct TmaDescriptors {
  using Element = typename Traits::Element;
  // (rows, d, heads, batch) with the d mode contiguous.
  using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<const Element*>(nullptr)), GmemShape{}, GmemStride{}));
  using GmemTensorOut = decltype(make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), GmemShape{}, GmemStride{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutQ{},
                                      Shape<Int<Traits::kBlockM>, Int<Traits::kD>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(typename Traits::SmemLayoutK{}),
                                      Shape<Int<Traits::kBlockN>, Int<Traits::kD>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(typename Traits::SmemLayoutV{}),
                                      Shape<Int<Traits::kBlockN>, Int<Traits::kDV>>{}, _1{}));
  // Paged K/V: (page_size, d, heads, pages) pools read kPageBox (or kSmallPageBox) rows of one
  // page at a time.
  using TmaKPage = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutKBox{},
                                          Shape<Int<Traits::kPageBox>, Int<Traits::kD>>{}, _1{}));
  using TmaVPage = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutVBox{},
                                          Shape<Int<Traits::kPageBox>, Int<Traits::kDV>>{}, _1{}));
  using TmaKSmallPage = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutKSmallBox{},
                                               Shape<Int<Traits::kSmallPageBox>, Int<Traits::kD>>{}, _1{}));
  using TmaVSmallPage = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutVSmallBox{},
                                               Shape<Int<Traits::kSmallPageBox>, Int<Traits::kDV>>{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GmemTensorOut{}, typename Traits::SmemLayoutOBox{}));
  using TmaQv = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, typename Traits::SmemLayoutQv{},
                                       Shape<Int<Traits::kBlockM>, Int<Traits::kDV>>{}, _1{}));
  TmaQ q;
  TmaQv qv;  // absorbed-MLA tiles only
  TmaK k;
  TmaV v;
  TmaKPage k_page;  // paged K/V whose page size is a multiple of kPageBox
  TmaVPage v_page;
  TmaKSmallPage k_page_small;  // ... or only of kSmallPageBox
  TmaVSmallPage v_page_small;
  TmaO o;
};

// One wgmma batch over the K mode: C = A B (zero_init: C's registers are not read) or C += A B,
// committed and not waited for.
template <class TiledMma, class TensorA, class TensorB, class TensorC>
__device__ __forceinline__ void wgmma(TiledMma& mma, TensorA& a, const TensorB& b, TensorC& c, bool zero_init) {
  constexpr bool kARegs = !std::is_base_of_v<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>;
  if constexpr (kARegs) warpgroup_fence_operand(a);
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  mma.accumulate_ = zero_init ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
#pragma unroll
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
  if constexpr (kARegs) warpgroup_fence_operand(a);
}

// C += A B over a long K mode in batches of kSteps k16 steps, one per trip of a loop that is not
// unrolled: only one trip's operand descriptors are live (fully unrolled, the 32 steps of Qv V^T
// on dv 512 spill them). Each trip is a whole committed batch: a batch spanning the loop's branch
// would make ptxas serialize every wgmma of the kernel.
template <int kSteps, class TiledMma, class TensorA, class TensorB, class TensorC>
__device__ __forceinline__ void wgmma_accumulate_batches(TiledMma& mma, const TensorA& a, const TensorB& b, TensorC& c) {
  static_assert(decltype(size<2>(a))::value % kSteps == 0, "whole batches");
  mma.accumulate_ = GMMA::ScaleOut::One;
#pragma unroll 1
  for (int k0 = 0; k0 < size<2>(a); k0 += kSteps) {
    warpgroup_fence_operand(c);
    warpgroup_arrive();
#pragma unroll
    for (int k = 0; k < kSteps; ++k) cute::gemm(mma, a(_, _, k0 + k), b(_, _, k0 + k), c);
    warpgroup_commit_batch();
    warpgroup_fence_operand(c);
  }
}

// fp32 accumulator fragment -> the same elements in the input dtype, two at a time.
template <class TensorF, class TensorE>
__device__ __forceinline__ void convert_fragment(const TensorF& f, TensorE& e) {
  using E = typename TensorE::value_type;
  static_assert(decltype(size(f))::value % 2 == 0, "fragments convert in pairs");
  Tensor f2 = recast<cutlass::Array<float, 2>>(f);
  Tensor e2 = recast<cutlass::Array<E, 2>>(e);
  cutlass::NumericArrayConverter<E, float, 2> cvt;
#pragma unroll
  for (int i = 0; i < size(f2); ++i) e2(i) = cvt(f2(i));
}

// Placed after the softmax that overlaps a P.V wgmma, just before waiting for that wgmma: a use
// of P's registers that never runs (never: false at run time, opaque to the compiler). It keeps
// the softmax clear of the wait: without a use, the register allocator treats P's registers as
// free once the wgmma is issued and gives them to the softmax, which then has to wait for the
// wgmma first; and the branch ends a basic block, which keeps the scheduler from hoisting the
// wait above the softmax.
template <class TensorP>
__device__ __forceinline__ void hold_until_wait(const TensorP& p_regs, bool never, void* scratch) {
  if (never) {
    const auto words = recast<uint4>(p_regs);
    uint4* out = reinterpret_cast<uint4*>(scratch);
#pragma unroll
    for (int i = 0; i < size(words); ++i) out[i] = words(i);
  }
}

template <class Traits>
struct Mainloop {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename cutlass::PipelineState<Traits::kStages>;
  using QPipeline = typename Traits::QPipeline;
  using QState = typename cutlass::PipelineState<Traits::kQStages>;
  using Work = TileWork<Traits::kBlockM, Traits::kBlockN, Traits::kQv>;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  static constexpr int kD = Traits::kD, kDV = Traits::kDV;

  // The shared-memory Q buffer of a Q pipeline stage, and (absorbed-MLA tiles) its Qv after it.
  static __device__ Element* q_buffer(typename Traits::SharedStorage& smem, const QState& q_state) {
    return smem.q.data() + q_state.index() * Traits::kQElems;
  }
  static __device__ Element* qv_buffer(typename Traits::SharedStorage& smem, const QState& q_state) {
    return q_buffer(smem, q_state) + cosize_v<typename Traits::SmemLayoutQ>;
  }

  // The tile's Q into the next Q buffer: one TMA box issued by thread 0 (every caller acquires),
  // or with packed GQA rows the producer warp group's gather (every thread of it calls).
  static __device__ void load_q(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                                typename Traits::SharedStorage& smem, const Work& w, QPipeline& pipe_q,
                                QState& q_state, int thread) {
    if (p.pack_gqa) {
      gather_q(p, smem, w, pipe_q, q_state, thread);
      return;
    }
    Tensor mQ = tma.q.get_tma_tensor(make_shape(p.q_tensor_rows, int(kD), p.num_heads, p.q_tensor_batch));
    const int q_batch = p.cu_seqlens_q ? 0 : w.batch;
    // (kBlockM, kD) tile of Q.
    Tensor gQ = local_tile(domain_offset(make_coord(w.seq.q_start, _0{}), mQ(_, _, w.head0, q_batch)),
                           Shape<Int<kBlockM>, Int<kD>>{}, make_coord(w.m_block, _0{}));
    pipe_q.producer_acquire(q_state);
    Tensor sQ = make_tensor(make_smem_ptr(q_buffer(smem, q_state)), typename Traits::SmemLayoutQ{});
    auto part_q = tma_partition(tma.q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    if (thread == 0) copy(tma.q.with(*pipe_q.producer_get_barrier(q_state), 0), get<0>(part_q), get<1>(part_q));
    if constexpr (Traits::kQv) {  // the same rows of qv, onto the same barrier (kBytesQ counts both)
      Tensor mQv = tma.qv.get_tma_tensor(make_shape(p.q_tensor_rows, int(kDV), p.num_heads, p.q_tensor_batch));
      Tensor gQv = local_tile(domain_offset(make_coord(w.seq.q_start, _0{}), mQv(_, _, w.head0, q_batch)),
                              Shape<Int<kBlockM>, Int<kDV>>{}, make_coord(w.m_block, _0{}));
      Tensor sQv = make_tensor(make_smem_ptr(qv_buffer(smem, q_state)), typename Traits::SmemLayoutQv{});
      auto part_qv = tma_partition(tma.qv, _0{}, Layout<_1>{}, group_modes<0, 2>(sQv), group_modes<0, 2>(gQv));
      if (thread == 0)
        copy(tma.qv.with(*pipe_q.producer_get_barrier(q_state), 0), get<0>(part_qv), get<1>(part_qv));
    }
    ++q_state;
  }

  // Run for each tile with keys by the producer warp (or the whole producer warp group when it
  // gathers Q); thread 0 issues the K/V copies.
  // v_tails: the V tails this warp has zeroed so far (the phase of smem.v_tail_loaded).
  static __device__ void produce(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                                 typename Traits::SharedStorage& smem, const Work& w, QPipeline& pipe_q,
                                 QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v, PipelineState& state,
                                 int thread, int& v_tails) {
    const auto gmem_shape = [](int rows, int dim, int heads, int batch) { return make_shape(rows, dim, heads, batch); };
    Tensor mK = tma.k.get_tma_tensor(gmem_shape(p.k_tensor_rows, kD, p.num_heads_k, p.k_tensor_batch));
    Tensor mV = tma.v.get_tma_tensor(gmem_shape(p.k_tensor_rows, kDV, p.num_heads_k, p.k_tensor_batch));
    const int kv_batch = p.cu_seqlens_k ? 0 : w.seq.b_kv;
    // (kBlockN, kD|kDV, n) blocks of K and V.
    Tensor gK = local_tile(domain_offset(make_coord(w.seq.k_start, _0{}), mK(_, _, w.head_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, _0{}));
    Tensor gV = local_tile(domain_offset(make_coord(w.seq.k_start, _0{}), mV(_, _, w.head_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kDV>>{}, make_coord(_, _0{}));
    Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutV{});
    auto part_k = tma_partition(tma.k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    Tensor tKg = get<0>(part_k);
    Tensor tKs = get<1>(part_k);
    auto part_v = tma_partition(tma.v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
    Tensor tVg = get<0>(part_v);
    Tensor tVs = get<1>(part_v);

    // Paged: boxes of kRows rows, (kRows, d, page_size / kRows, pages) pool tiles into (kRows, d,
    // boxes per block, stages) shared-memory boxes, kRows = kPageBox or, for pages that are not
    // whole kPageBox boxes, kSmallPageBox. A box past the last key reads page `pages` (past the
    // pool: TMA zero-fills it).
    const bool paged = p.page_table != nullptr;
    const bool small_boxes = small_page_boxes(p);
    const int box_rows = small_boxes ? Traits::kSmallPageBox : Traits::kPageBox;
    static_assert(kBlockN / Traits::kSmallPageBox <= 32, "one producer lane per page box of a key block");
    const int* pages = p.page_table + int64_t(w.batch) * p.page_table_batch_stride;
    const PageSplit split(p.page_size);
    // Lane b owns box b of a key block: it looks up the box's page before the stage's acquire, so
    // that the page-table loads (one per lane, side by side) overlap that wait, and issues the
    // box's copy after it. One page per lane keeps the 24-register producer's state at one
    // register whatever the box count (pages of 16 keys: 8 boxes per d128 block). The lanes' copies
    // go out side by side, their page arithmetic by shift and mask (pages of 64 and 128 keys:
    // +7-10% on an extend step against lane 0 issuing every box with runtime divisions, H100 bf16
    // d128).
    const auto look_up = [&](int n) {
      if (!paged || thread >= kBlockN / box_rows) return 0;
      const int key = n * kBlockN + thread * box_rows;
      return key < w.seq.seqlen_k ? pages[split.page(key)] : p.k_tensor_batch;
    };
    // Lane b copies box b of block n of one tensor (kCols columns at s_base) into stage `stage`,
    // completing on `barrier`. The lanes run one copy with their own box index; unrolled over
    // compile-time box indices instead (lane b taking branch b), pages of 16 keys read 28% below
    // the gather, and the pages shuffled to lane 0 spilled the d128 producer (968 bytes).
    const auto copy_boxes = [&](const auto& tma_page, auto rows, auto cols, Element* s_base, auto smem_layout,
                                uint64_t* barrier, int n, int stage, int page) {
      constexpr int kRows = decltype(rows)::value, kCols = decltype(cols)::value;
      if (thread >= kBlockN / kRows) return;
      Tensor mPool = tma_page.get_tma_tensor(gmem_shape(p.k_tensor_rows, kCols, p.num_heads_k, p.k_tensor_batch));
      Tensor gBox = local_tile(mPool(_, _, w.head_kv, _), Shape<Int<kRows>, Int<kCols>>{},
                               make_coord(_, _0{}, _));  // (box rows, cols, boxes per page, pages)
      Tensor sBox = flat_divide(make_tensor(make_smem_ptr(s_base), smem_layout),
                                Shape<Int<kRows>, Int<kCols>>{});  // (box rows, cols, boxes, 1, stages)
      auto part = tma_partition(tma_page, _0{}, Layout<_1>{}, group_modes<0, 2>(sBox), group_modes<0, 2>(gBox));
      const int row_box = split.row(n * kBlockN + thread * kRows) / kRows;
      copy(tma_page.with(*barrier, 0), get<0>(part)(_, row_box, page), get<1>(part)(_, thread, _0{}, stage));
    };
    // Block n of one tensor (`cols` columns at s_base) in the call's box size.
    const auto page_boxes = [&](const auto& tma_large, const auto& tma_small, auto cols, Element* s_base,
                                auto smem_layout, uint64_t* barrier, int n, int stage, int page) {
      if (small_boxes)
        copy_boxes(tma_small, Int<Traits::kSmallPageBox>{}, cols, s_base, smem_layout, barrier, n, stage, page);
      else copy_boxes(tma_large, Int<Traits::kPageBox>{}, cols, s_base, smem_layout, barrier, n, stage, page);
    };
    const auto k_boxes = [&](uint64_t* barrier, int n, int stage, int page) {
      page_boxes(tma.k_page, tma.k_page_small, Int<kD>{}, smem.k.data(), typename Traits::SmemLayoutK{}, barrier, n,
                 stage, page);
    };
    const auto v_boxes = [&](uint64_t* barrier, int n, int stage, int page) {
      page_boxes(tma.v_page, tma.v_page_small, Int<kDV>{}, smem.v.data(), typename Traits::SmemLayoutV{}, barrier, n,
                 stage, page);
    };

    auto load_k = [&](int n, const PipelineState& st, int page) {
      pipe_k.producer_acquire(st);
      if (paged) k_boxes(pipe_k.producer_get_barrier(st), n, st.index(), page);
      else if (thread == 0) copy(tma.k.with(*pipe_k.producer_get_barrier(st), 0), tKg(_, n), tKs(_, st.index()));
    };
    auto load_v = [&](int n, const PipelineState& st, int page) {
      pipe_v.producer_acquire(st);
      if (paged) v_boxes(pipe_v.producer_get_barrier(st), n, st.index(), page);
      else if (thread == 0) copy(tma.v.with(*pipe_v.producer_get_barrier(st), 0), tVg(_, n), tVs(_, st.index()));
    };
    auto load_kv = [&](int n) {
      const int page = look_up(n);
      load_k(n, state, page);
      load_v(n, state, page);
      ++state;
    };
    // The block that holds the last key, when its V rows past that key are not zero-filled by TMA
    // (v_tail_needs_zero): V lands on a barrier of its own (smem.v_tail_loaded), the warp zeroes
    // those rows, and only then completes the stage's full barrier (one plain arrive: the stage
    // is not armed with transaction bytes), so the consumers see the tail already zeroed.
    uint64_t* tail_loaded = &smem.v_tail_loaded;
    auto issue_v_tail = [&](int n, const PipelineState& st, int page) {
      smem.pipe_v.empty_barrier_[st.index()].wait(st.phase());
      if (thread == 0) cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(tail_loaded, Traits::kBytesV);
      if (paged) v_boxes(tail_loaded, n, st.index(), page);
      else if (thread == 0) copy(tma.v.with(*tail_loaded, 0), tVg(_, n), tVs(_, st.index()));
    };
    auto finish_v_tail = [&](const PipelineState& st) {
      cutlass::arch::ClusterBarrier::wait(tail_loaded, v_tails++ & 1);
      zero_v_rows(smem, w, st, thread, 32);
      __syncwarp();
      if (thread == 0) smem.pipe_v.full_barrier_[st.index()].arrive();
    };
    // With two Q buffers Q goes first (its buffer was freed a tile ago). With one, the first
    // K/V block streams in while the consumers finish the previous tile, and Q waits until they
    // no longer read the previous Q (nor, when O lives in Q's bytes, the previous O).
    int n = w.n_block_max - 1;
    if constexpr (Traits::kQStages > 1) load_q(p, tma, smem, w, pipe_q, q_state, thread);
    if (producer_zeroes_v_tail(p, w)) {
      // Neither Q nor the next K waits for the tail: the consumers need K of block n - 1 right
      // after block n's softmax, V of block n only for its P.V.
      const PipelineState tail = state;
      const int tail_page = look_up(n);
      load_k(n, tail, tail_page);
      issue_v_tail(n, tail, tail_page);
      ++state;
      if constexpr (Traits::kQStages == 1) load_q(p, tma, smem, w, pipe_q, q_state, thread);
      const bool more = n - 1 >= w.n_block_min;
      const int next_page = more ? look_up(n - 1) : 0;
      if (more) load_k(n - 1, state, next_page);
      finish_v_tail(tail);
      if (more) {
        load_v(n - 1, state, next_page);
        ++state;
        --n;
      }
    } else {
      load_kv(n);
      if constexpr (Traits::kQStages == 1) load_q(p, tma, smem, w, pipe_q, q_state, thread);
    }
    for (--n; n >= w.n_block_min; --n) load_kv(n);
  }

  // Paged k/v: key j of the tile's batch row is row j % page_size of page page_table[j /
  // page_size], so a block's rows are scattered and no TMA box spans them. The 128 producer
  // threads gather each block with 16-byte cp.async copies instead, and each thread arrives on
  // the stage's full barrier when its copies land (the pipelines expect kProducerThreads
  // arrivals). Q arrives by TMA from thread 0, or gathered likewise when GQA heads are packed.
  //
  // Rows go in groups of 8: warp w copies groups w, w + 4, ...; lane l copies row 8 g + l % 8,
  // 16-byte chunks 4 c + l / 8 (c = 0 .. cols / 32 - 1), so a warp access is 8 rows x 64
  // contiguous bytes (4 shared-memory wavefronts, the minimum for 512 bytes). The swizzle of the
  // K-major atoms repeats every 8 rows, so all of a thread's destinations are one of two
  // per-thread bases plus constants, and each copy is a single cp.async with immediate offsets
  // (the producer runs on 24 registers). Rows past the last key are zero-filled without a
  // page-table read. Paged rows start at slot 0 (the binding refuses left padding with pages).
  static constexpr int kRowGroups = kBlockN / 8;
  static constexpr int kGroupsPerWarp = (kRowGroups + 3) / 4;
  static_assert(kBlockN % 8 == 0, "key blocks are whole groups of 8 rows");

  // f(Int<i>{}) for each i of the sequence (an unrolled loop with a compile-time index).
  template <class F, int... kIndex>
  static __device__ __forceinline__ void each_index(std::integer_sequence<int, kIndex...>, F&& f) {
    (f(Int<kIndex>{}), ...);
  }

  // One 16-byte cp.async at [dst + kDstBytes] <- [src + kSrcBytes]; src_size 0 writes zeros.
  template <int kSrcBytes, int kDstBytes>
  static __device__ __forceinline__ void copy16(uint32_t dst, const Element* src, int src_size) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0+%3], [%1+%4], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_size), "n"(kDstBytes), "n"(kSrcBytes));
  }

  // This thread's source rows of block n of one paged tensor: row 8 g + lane % 8 of each of its
  // row groups g, at the lane's first chunk (nullptr past the last key). Found before waiting
  // for the stage, so the page-table loads (all issued together) overlap the wait.
  struct SourceRows {
    const Element* src[kGroupsPerWarp];
  };
  static __device__ SourceRows find_rows(const FwdParams& p, const Element* base, int64_t batch_stride,
                                         int64_t row_stride, const int* pages, int seqlen_k, int n, int warp,
                                         int lane) {
    const PageSplit split(p.page_size);
    SourceRows rows;
#pragma unroll
    for (int j = 0; j < kGroupsPerWarp; ++j) {
      const int g = warp + 4 * j, key = n * kBlockN + 8 * g + lane % 8;
      const bool valid = (kRowGroups % 4 == 0 || g < kRowGroups) && key < seqlen_k;
      const int slot = valid ? key : 0;  // slot 0 keeps the (unused) page-table load in bounds
      const int64_t row = split.row(slot);
      const int64_t page = pages[split.page(slot)];
      rows.src[j] = valid ? base + page * batch_stride + row * row_stride + lane / 8 * 8 : nullptr;
    }
    return rows;
  }

  // Where one lane's 16-byte copies land in a K-major swizzled (kTileRows, kCols) tile: row
  // 8 g + lane % 8 of row group g, chunks 4 c + lane / 8 (c = 0 .. kCols / 32 - 1).
  template <int kCols, int kTileRows>
  struct GatherDst {
    using Atom = decltype(k_major_atom<Element, kCols>());
    static constexpr int kAtomCols = decltype(size<1>(Atom{}))::value;  // 64: 128-byte swizzle, 32: 64-byte
    static_assert((kAtomCols == 64 || kAtomCols == 32) && kCols % 32 == 0,
                  "gathered tiles: 128- or 64-byte swizzled rows, whole 64-byte chunk groups");
    static_assert(kTileRows % 8 == 0, "gathered tiles are whole groups of 8 rows");
    static constexpr int kAtomChunks = kAtomCols / 8;
    uint32_t dst_even, dst_odd;  // byte offsets of (row r, chunk 4 c + q) for even / odd c within an atom row

    __device__ GatherDst(uint32_t s_tile, int lane) {
      const int r = lane % 8, q = lane / 8;
      // The atom XORs the 16-byte chunk index within its row by r (128-byte) or (r / 2) % 4 (64-byte).
      const int t = q ^ (kAtomCols == 64 ? r : (r >> 1) & 3);
      dst_even = s_tile + 2 * (r * kAtomCols + t * 8);
      dst_odd = s_tile + 2 * (r * kAtomCols + (t ^ 4) * 8);
    }
    // The lane's chunks of its row of group g from src (the lane's first chunk); src_size 0 writes zeros.
    __device__ __forceinline__ void copy_group(int g, const Element* src, int src_size) const {
      // (kTileRows, kAtomCols) atoms stack column block after column block.
      each_index(std::make_integer_sequence<int, kCols / 32>{}, [&](auto c) {
        constexpr int kFirstChunk = 4 * decltype(c)::value;
        constexpr int kColumnBlockBytes = 2 * (kFirstChunk / kAtomChunks) * kTileRows * kAtomCols;
        const uint32_t dst = (kFirstChunk % kAtomChunks == 0 ? dst_even : dst_odd) + g * (2 * 8 * kAtomCols);
        copy16<2 * 8 * kFirstChunk, kColumnBlockBytes>(dst, src, src_size);
      });
    }
  };

  // Copies the rows into the stage tile at shared address s_tile (kCols columns).
  template <int kCols>
  static __device__ void copy_rows(const SourceRows& rows, const Element* base, uint32_t s_tile, int warp,
                                   int lane) {
    const GatherDst<kCols, kBlockN> dst(s_tile, lane);
#pragma unroll
    for (int j = 0; j < kGroupsPerWarp; ++j) {
      const int g = warp + 4 * j;
      if (kRowGroups % 4 != 0 && g >= kRowGroups) break;
      dst.copy_group(g, rows.src[j] ? rows.src[j] : base, rows.src[j] ? 16 : 0);
    }
  }

  // Packed GQA: tile row r is query r / group of head head0 + r % group, so its rows come from
  // group heads and no TMA box spans them. The 128 producer threads gather them with cp.async
  // (rows in groups of 8 as for paged K/V; rows that do not attend are zero-filled), and each
  // thread arrives on the Q buffer's full barrier once its copies have landed.
  static __device__ void gather_q(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                                  QPipeline& pipe_q, QState& q_state, int thread) {
    static_assert(kBlockM % 32 == 0, "each producer warp copies whole groups of 8 rows");
    const int warp = thread / 32, lane = thread % 32;
    pipe_q.producer_acquire(q_state);
    // The rows of one tensor (q, or qv with kCols = dv) into the shared tile at s_tile.
    const auto gather = [&](auto cols, const void* tensor, int64_t offset, int64_t row_stride, int64_t head_stride,
                            Element* s_tile) {
      const Element* base = static_cast<const Element*>(tensor) + offset + lane / 8 * 8;
      const GatherDst<decltype(cols)::value, kBlockM> dst(cast_smem_ptr_to_uint(s_tile), lane);
#pragma unroll 1  // one row's address at a time: the producer runs on 24 registers
      for (int j = 0; j < kBlockM / 32; ++j) {
        const int g = warp + 4 * j, r = w.row0 + 8 * g + lane % 8;
        const bool valid = r <= w.last_used;
        const Element* src = valid ? base + int64_t(w.query(r)) * row_stride + int64_t(w.head(r)) * head_stride : base;
        dst.copy_group(g, src, valid ? 16 : 0);
      }
    };
    gather(Int<kD>{}, p.q, w.seq.q_offset, p.q_row_stride, p.q_head_stride, q_buffer(smem, q_state));
    if constexpr (Traits::kQv)
      gather(Int<kDV>{}, p.qv, w.seq.qv_offset, p.qv_row_stride, p.qv_head_stride, qv_buffer(smem, q_state));
    cutlass::arch::cpasync_barrier_arrive_noinc(pipe_q.producer_get_barrier(q_state));
    ++q_state;
  }

  // K runs a block ahead of V, as the consumers use them (Q K_n^T next to P_{n+1} V_{n+1}): K_n
  // is issued as soon as its stage frees, before waiting for V_{n+1}'s stage.
  static __device__ void produce_gathered(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                                          typename Traits::SharedStorage& smem, const Work& w, QPipeline& pipe_q,
                                          QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v, PipelineState& state,
                                          int thread) {
    const int warp = thread / 32, lane = thread % 32;
    const int* pages = p.page_table + int64_t(w.batch) * p.page_table_batch_stride;
    const Element* k_base = static_cast<const Element*>(p.k) + int64_t(w.head_kv) * p.k_head_stride;
    const Element* v_base = static_cast<const Element*>(p.v) + int64_t(w.head_kv) * p.v_head_stride;
    const uint32_t s_k = cast_smem_ptr_to_uint(smem.k.data()), s_v = cast_smem_ptr_to_uint(smem.v.data());
    // Block n of one paged tensor (cols columns) into the next stage of its pipeline. The stage's
    // full barrier completes once every producer thread's copies have landed: each thread's one
    // arrival is triggered by the completion of its copies (noinc: it counts towards the
    // kProducerThreads arrivals the barrier expects).
    const auto load = [&](auto cols, Pipeline& pipe, PipelineState& st, const Element* base, int64_t batch_stride,
                          int64_t row_stride, uint32_t s_stages, int n) {
      constexpr int kCols = decltype(cols)::value;
      const SourceRows rows = find_rows(p, base, batch_stride, row_stride, pages, w.seq.seqlen_k, n, warp, lane);
      pipe.producer_acquire(st);
      copy_rows<kCols>(rows, base, s_stages + st.index() * uint32_t(kBlockN * kCols * sizeof(Element)), warp, lane);
      cutlass::arch::cpasync_barrier_arrive_noinc(pipe.producer_get_barrier(st));
      ++st;
    };
    PipelineState state_v = state;
    const auto load_k = [&](int n) {
      load(Int<kD>{}, pipe_k, state, k_base, p.k_batch_stride, p.k_row_stride, s_k, n);
    };
    const auto load_v = [&](int n) {
      load(Int<kDV>{}, pipe_v, state_v, v_base, p.v_batch_stride, p.v_row_stride, s_v, n);
    };

    if constexpr (Traits::kQStages > 1) load_q(p, tma, smem, w, pipe_q, q_state, thread);
    for (int n = w.n_block_max - 1; n >= w.n_block_min; --n) {
      load_k(n);
      if (n == w.n_block_max - 1) {
        if constexpr (Traits::kQStages == 1) load_q(p, tma, smem, w, pipe_q, q_state, thread);
      } else {
        load_v(n + 1);
      }
    }
    load_v(w.n_block_min);
  }

  // Paged K/V are gathered with cp.async unless every page holds whole kSmallPageBox-row boxes.
  static __host__ __device__ bool gathers(const FwdParams& p) {
    return p.page_table != nullptr && p.page_size % Traits::kSmallPageBox != 0;
  }
  // Paged K/V by TMA in kSmallPageBox-row boxes: pages that are not whole kPageBox boxes.
  static __host__ __device__ bool small_page_boxes(const FwdParams& p) {
    return Traits::kSmallPageBox < Traits::kPageBox && p.page_table != nullptr && p.page_size % Traits::kPageBox != 0;
  }
  // Every producer thread copies rows (paged K/V or packed GQA Q); otherwise one warp issues TMA.
  static __host__ __device__ bool whole_producer_group(const FwdParams& p) { return gathers(p) || p.pack_gqa; }

  // Whether the consumer groups take turns issuing their wgmmas. Not over gathered (paged) K/V:
  // a V stage frees only when every group has used it, and the groups' half-block offset would
  // leave the slower cp.async gather too little time to refill it.
  static __device__ bool ping_pong_for(const FwdParams& p) { return Traits::kPingPong && !gathers(p); }

  // Softcap and the visibility mask of one consumer thread's scores: s is its S accumulator
  // fragment, s_rc the (rows, cols) view of it, coords_rc the elements' (row, key) in the tile.
  template <int kRows>
  struct ScoreTransform {
    int lo[kRows], hi[kRows];  // visible keys of the thread's rows
    bool softcap;
    float softcap_in;  // scores -> tanh arguments

    template <class CoordsRC>
    __device__ ScoreTransform(const FwdParams& p, const Work& w, const CoordsRC& coords_rc)
        : softcap(p.softcap > 0.f), softcap_in(p.softcap > 0.f ? p.softmax_scale / p.softcap : 0.f) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) w.row_bounds(w.row0 + get<0>(coords_rc(i, 0)), lo[i], hi[i]);
    }
    // Scores of key block n -> masked scores (in place).
    template <class TensorS, class TensorSRC, class CoordsRC>
    __device__ __forceinline__ void operator()(const KeyBlocks& blocks, int n, TensorS& s, TensorSRC& s_rc,
                                               const CoordsRC& coords_rc) const {
      if (softcap) {
#pragma unroll
        for (int i = 0; i < size(s); ++i) s(i) = tanhf(s(i) * softcap_in);
      }
      if (blocks.needs_mask(n)) {
        const int key0 = n * kBlockN;
#pragma unroll
        for (int i = 0; i < kRows; ++i)
#pragma unroll
          for (int j = 0; j < size<1>(s_rc); ++j) {
            const int key = key0 + get<1>(coords_rc(i, j));
            if (key < lo[i] || key > hi[i]) s_rc(i, j) = -INFINITY;
          }
      }
    }
  };

  // A TMA box fills the whole block: in the block that holds the last key, the V rows past it
  // hold whatever the tensor has there (another sequence's keys, or cache slots never written,
  // possibly NaN). Their P is 0, but 0 * NaN is NaN, so those rows are zeroed before the first
  // P.V that reads the block. Not needed where those rows lie past the tensor's
  // row extent (a batched tensor that ends at the last key, or the last packed sequence): TMA
  // zero-fills them, as the gather does its rows past the last key.
  static __device__ int v_rows_valid(const Work& w) { return w.seq.seqlen_k - (w.n_block_max - 1) * kBlockN; }
  static __device__ bool v_tail_needs_zero(const FwdParams& p, const Work& w) {
    // (A page's rows past the last key hold whatever the pool held.)
    return !gathers(p) && v_rows_valid(w) < kBlockN &&
           (p.page_table != nullptr || w.seq.k_start + w.seq.seqlen_k < p.k_tensor_rows);
  }
  // The producer zeroes it, except on the absorbed-MLA tile: there the first wgmma (Q K^T +
  // Qv V^T) already reads V, and group 0 zeroes the tail after it (zero_v_tail), off that path.
  static __device__ bool producer_zeroes_v_tail(const FwdParams& p, const Work& w) {
    return !Traits::kQv && v_tail_needs_zero(p, w);
  }
  // `threads` threads (thread: this one's index among them) zero the V rows past the last key
  // in stage st and make those writes visible to wgmma; the caller then lets the readers in.
  static __device__ void zero_v_rows(typename Traits::SharedStorage& smem, const Work& w, const PipelineState& st,
                                     int thread, int threads) {
    const int rows = v_rows_valid(w);
    Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutV{});
    constexpr int kChunks = kDV / 8;  // 16-byte chunks per row
    for (int i = thread; i < (kBlockN - rows) * kChunks; i += threads)
      *reinterpret_cast<uint4*>(&sV(rows + i / kChunks, i % kChunks * 8, st.index())) = make_uint4(0, 0, 0, 0);
    cutlass::arch::fence_view_async_shared();  // generic writes, read by wgmma (async proxy)
  }
  // Group 0 of the absorbed-MLA tile (thread: its index in the group) zeroes the tail of the
  // block in stage st, then its threads meet. Kept outside the main loop, whose registers it
  // would cost.
  static __device__ void zero_v_tail(typename Traits::SharedStorage& smem, const Work& w, const PipelineState& st,
                                     int thread) {
    zero_v_rows(smem, w, st, thread, 128);
    cutlass::arch::NamedBarrier(128, int(BarrierId::kVTail)).arrive_and_wait();
  }

  // Paged K/V blocks and packed GQA Q rows are written by cp.async (the generic proxy); wgmma
  // reads shared memory through the async proxy, so the consumers fence between the two after
  // their wait.
  static __device__ void wait_kv(bool gathered, Pipeline& pipe, const PipelineState& st) {
    pipe.consumer_wait(st);
    if (gathered) cutlass::arch::fence_view_async_shared();
  }
  static __device__ void wait_q(const FwdParams& p, QPipeline& pipe_q, const QState& q_state) {
    pipe_q.consumer_wait(q_state);
    if (p.pack_gqa) cutlass::arch::fence_view_async_shared();
  }

  // Runs the key blocks of the tile for this consumer thread (index among all consumer threads).
  // o needs no initial value; on return it holds the unnormalised output and softmax the row
  // statistics, unless the result is false: then none of the group's rows sees a key (their
  // output is 0) and o is left as it was. before_first_wait() runs once, right after the group's
  // first Q K^T has been issued (for a group whose rows see no key, at its only turn), so that
  // what it does (the previous tile's epilogue) overlaps that wgmma; it must not touch o or any
  // register a wgmma writes. before_last_wait() runs once, right after the group's last P.V has
  // been issued (for a group whose rows see no key, after before_first_wait()), so that what it
  // does (the rows' final statistics) overlaps that wgmma; the same restriction applies.
  // q_state: this tile's Q buffer. Unless O is staged in Q's bytes (then the kernel releases Q
  // after the epilogue), the consumers release Q as soon as their last Q K^T has completed.
  // With Traits::kGroupKeyRanges each group computes only the key blocks its own 64 rows see
  // (Work::rows_slice): on the causal diagonal of a 192-row tile, or with a window, fewer than the
  // tile loads. Blocks outside its range it skips: it still takes and passes its wgmma turn and
  // waits for and releases the stages, so the turns and pipelines stay in step with the other
  // groups.
  template <class FragO, class Softmax, class BeforeFirstWait, class BeforeLastWait>
  static __device__ bool consume(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                                 QPipeline& pipe_q, const QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v,
                                 PipelineState& state, int thread_idx, FragO& o, Softmax& softmax,
                                 BeforeFirstWait&& before_first_wait, BeforeLastWait&& before_last_wait) {
    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread_idx);
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);
    Tensor sQ = make_tensor(make_smem_ptr(q_buffer(smem, q_state)), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K) descriptors
    Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stages)
    Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stages)

    Tensor s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N) fp32
    Tensor s_rc = make_tensor(s.data(), rowcol_layout(s.layout()));                  // (rows, cols)
    Tensor pr = make_tensor_like<Element>(s);                                       // P in the input dtype
    Tensor tOrP = make_tensor(pr.data(), acc_to_a_layout(s.layout()));               // (MMA, MMA_M, MMA_K)
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
    constexpr int kRows = decltype(size<0>(s_rc))::value;

    // Coordinates of the thread's score elements within the tile.
    Tensor coords = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    const int group = thread_idx / 128;
    const KeyBlocks wg =  // the key blocks of this group's rows
        Traits::kGroupKeyRanges ? warp_uniform(w.rows_slice(group * 64, 64)) : static_cast<const KeyBlocks&>(w);
    const ScoreTransform<kRows> transform(p, w, coords_rc);
    auto score_transform = [&](int n) { transform(wg, n, s, s_rc, coords_rc); };
    // Ping-pong: wait for this group's turn before issuing wgmmas, pass it on after.
    const bool ping_pong = ping_pong_for(p);
    auto take_turn = [&] {
      if (ping_pong) cutlass::arch::NamedBarrier::sync(256, int(BarrierId::kScheduler) + group);
    };
    auto pass_turn = [&] {
      if (ping_pong)
        cutlass::arch::NamedBarrier::arrive(256, int(BarrierId::kScheduler) + (group + 1) % Traits::kConsumerGroups);
    };
    auto release_q = [&](int n) {
      if (!Traits::kOInQ && n == wg.n_block_min) pipe_q.consumer_release(q_state);
    };

    const bool gathered = gathers(p);
    wait_q(p, pipe_q, q_state);
    PipelineState state_v = state;
    // A block none of the group's rows sees: one turn and both stages, no wgmma.
    auto skip_block = [&](int n) {
      take_turn();
      pass_turn();
      pipe_k.consumer_wait(state);
      pipe_k.consumer_release(state);
      ++state;
      pipe_v.consumer_wait(state_v);
      pipe_v.consumer_release(state_v);
      ++state_v;
    };
    for (int n = w.n_block_max - 1; n >= wg.n_block_max; --n) skip_block(n);
    if (wg.has_keys()) {
      float o_scale[kRows];
      bool rescale_o = false;  // some row's o_scale differs from 1 (OnlineSoftmax::update)
      bool first_pv = true;
      int n = wg.n_block_max - 1;
      wait_kv(gathered, pipe_k, state);
      take_turn();
      wgmma(mma_qk, tSrQ, tSrK(_, _, _, state.index()), s, true);
      pass_turn();
      before_first_wait();
      warpgroup_wait<0>();
      release_q(n);
      pipe_k.consumer_release(state);
      ++state;
      score_transform(n);
      rescale_o = softmax.update(s_rc, o_scale);
      convert_fragment(s, pr);
      for (--n; n >= wg.n_block_min; --n) {
        wait_kv(gathered, pipe_k, state);
        wait_kv(gathered, pipe_v, state_v);
        take_turn();
        wgmma(mma_qk, tSrQ, tSrK(_, _, _, state.index()), s, true);
        // O holds nothing before the first P.V; after, rescale it by block n + 1's factor while
        // the tensor cores run Q K_n^T.
        if (!first_pv && rescale_o) scale_rows(o_rc, o_scale);
        wgmma(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), o, first_pv);
        first_pv = false;
        pass_turn();
        warpgroup_wait<1>();
        release_q(n);
        pipe_k.consumer_release(state);
        ++state;
        score_transform(n);
        rescale_o = softmax.update(s_rc, o_scale);
        hold_until_wait(pr, p.num_heads <= 0, smem.k.data());
        warpgroup_wait<0>();
        pipe_v.consumer_release(state_v);
        ++state_v;
        convert_fragment(s, pr);
      }
      wait_kv(gathered, pipe_v, state_v);
      take_turn();
      if (!first_pv && rescale_o) scale_rows(o_rc, o_scale);
      wgmma(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), o, first_pv);
      pass_turn();
      before_last_wait();
      hold_until_wait(pr, p.num_heads <= 0, smem.k.data());
      warpgroup_wait<0>();
      pipe_v.consumer_release(state_v);
      ++state_v;  // the blocks below, if the group skips any, come next
    } else {  // none of the group's rows sees a key: the final P.V's turn (and no wgmma in flight)
      take_turn();
      pass_turn();
      before_first_wait();
      before_last_wait();
      if (!Traits::kOInQ) pipe_q.consumer_release(q_state);
    }
    for (int n = wg.n_block_min - 1; n >= w.n_block_min; --n) skip_block(n);
    return wg.has_keys();
  }

  // ---- The absorbed-MLA tile (Traits::kQv) ----
  // Both consumer groups work on the tile's 64 rows; group g accumulates O's columns
  // [g dv / 2, (g + 1) dv / 2). Per key block n (high to low):
  //   group 0: S_n = Q K_n^T + Qv V_n^T (smem x smem); release K_n; mask and softmax; hand P_n and
  //            its rows' factors to group 1 (shared memory, p_full); O_0 = O_0 f + P_n V_n[:, half 0]
  //            (P from registers), software-pipelined as in consume: the P.V of block n + 1 runs
  //            on the tensor cores while the softmax of block n does;
  //   group 1: once P_n is there, O_1 = O_1 f + P_n V_n[:, half 1] (smem x smem), then p_empty.
  // Thread t of either group holds the same rows (one-group MMAs of the same M), so group 0's
  // thread t passes its row factors to group 1's thread t through row_scale.

  // One group's half of V stage st as the (kDVGroup, kBlockN) MN-major B operand of P.V.
  template <class ThrMma>
  static __device__ auto v_group_operand(typename Traits::SharedStorage& smem, const ThrMma& thr, int st, int group) {
    Element* base = smem.v.data() + st * Traits::kVStageElems + group * Traits::kVGroupElems;
    return thr.partition_fragment_B(make_tensor(make_smem_ptr(base), typename Traits::SmemLayoutVtGroup{}));
  }

  // Group 0 -> group 1, per key block: wait_p_empty (group 1 has read the previous ones), store_p
  // (P's registers in the S accumulator layout), pass_factors (one factor per row); after the last
  // block only the final factors pass. Two mbarriers carry the handoffs (p_full: group 0's 128
  // threads arrive, p_empty: group 1's); k counts the thread's handoffs so far, across tiles:
  // handoff k waits for phase k (p_empty's phase 0 is group 1's release before its first tile).
  static __device__ void wait_p_empty(typename Traits::SharedStorage& smem, int k) { smem.p_empty.wait(k & 1); }
  // stmatrix: four 8 x 8 matrices per instruction (few addresses: element-wise stores of the
  // swizzled tile had their addresses hoisted out of the loop and spilled).
  template <class TensorP>
  static __device__ void store_p(typename Traits::SharedStorage& smem, TensorP& pr, int t) {
    auto copy_p = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, typename Traits::TiledMmaQK{});
    auto thr = copy_p.get_thread_slice(t);
    Tensor sP = make_tensor(make_smem_ptr(smem.p.data()), typename Traits::SmemLayoutP{});
    copy(copy_p, thr.retile_S(pr), thr.partition_D(sP));
    cutlass::arch::fence_view_async_shared();  // generic writes, read by group 1's wgmma
  }
  template <int kRows>
  static __device__ void pass_factors(typename Traits::SharedStorage& smem, const float (&f)[kRows], int t, int& k) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) smem.row_scale[i * 128 + t] = f[i];
    smem.p_full.arrive();
    ++k;
  }
  // Group 1's side: waits for P and the factors; release_p once it has read them.
  template <int kRows>
  static __device__ void take_factors(typename Traits::SharedStorage& smem, float (&f)[kRows], int t, int& k) {
    smem.p_full.wait(k & 1);
#pragma unroll
    for (int i = 0; i < kRows; ++i) f[i] = smem.row_scale[i * 128 + t];
    ++k;
  }
  static __device__ void release_p(typename Traits::SharedStorage& smem) { smem.p_empty.arrive(); }

  // Group 0 of the absorbed-MLA tile (t = thread index in the group). o: its (64, dv / 2)
  // accumulator; softmax: the rows' statistics. Releases Q after its last S.
  template <class FragO, class Softmax>
  static __device__ void consume_scores(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                                        QPipeline& pipe_q, const QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v,
                                        PipelineState& state, int t, FragO& o, Softmax& softmax, int& handoffs) {
    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(t);
    auto thr_pv = mma_pv.get_thread_slice(t);
    Tensor sQ = make_tensor(make_smem_ptr(q_buffer(smem, q_state)), typename Traits::SmemLayoutQ{});
    Tensor sQv = make_tensor(make_smem_ptr(qv_buffer(smem, q_state)), typename Traits::SmemLayoutQv{});
    Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutV{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K) descriptors
    Tensor tSrQv = thr_qk.partition_fragment_A(sQv);  // (MMA, MMA_M, MMA_K over dv)
    Tensor tSrK = thr_qk.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K, stages)
    Tensor tSrV = thr_qk.partition_fragment_B(sV);    // (MMA, MMA_N, MMA_K over dv, stages): V as Qv's K

    Tensor s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N) fp32
    Tensor s_rc = make_tensor(s.data(), rowcol_layout(s.layout()));
    Tensor pr = make_tensor_like<Element>(s);
    Tensor tOrP = make_tensor(pr.data(), acc_to_a_layout(s.layout()));
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
    constexpr int kRows = decltype(size<0>(s_rc))::value;
    Tensor coords = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    const ScoreTransform<kRows> transform(p, w, coords_rc);

    const bool gathered = gathers(p);
    // S_n = Q K_n^T + Qv V_n^T: wgmma batches into the same accumulator.
    auto issue_scores = [&](const PipelineState& st) {
      wait_kv(gathered, pipe_k, st);
      wait_kv(gathered, pipe_v, st);
      wgmma(mma_qk, tSrQ, tSrK(_, _, _, st.index()), s, true);
      // One 64-column swizzle atom of Qv and V (4 k16 steps) per batch.
      wgmma_accumulate_batches<4>(mma_qk, tSrQv, tSrV(_, _, _, st.index()), s);
    };
    auto release_q = [&](int n) {
      if (n == w.n_block_min) pipe_q.consumer_release(q_state);
    };

    wait_q(p, pipe_q, q_state);
    PipelineState state_v = state;
    float o_scale[kRows];
    bool first_pv = true;
    // S_n has completed: release Q (after the last block) and K_n, mask and softmax.
    auto finish_scores = [&](int n) {
      release_q(n);
      pipe_k.consumer_release(state);
      ++state;
      transform(w, n, s, s_rc, coords_rc);
      softmax.update(s_rc, o_scale);
    };
    // P of the current block and its rows' factors to group 1.
    auto hand_over = [&] {
      wait_p_empty(smem, handoffs);
      store_p(smem, pr, t);
      pass_factors(smem, o_scale, t, handoffs);
    };

    int n = w.n_block_max - 1;
    issue_scores(state);
    warpgroup_wait<0>();
    finish_scores(n);
    convert_fragment(s, pr);
    // Q K^T and Qv V^T of the first block have read V: zero its tail before any P.V.
    if (v_tail_needs_zero(p, w)) zero_v_tail(smem, w, state_v, t);
    hand_over();
    for (--n; n >= w.n_block_min; --n) {
      issue_scores(state);
      if (!first_pv) scale_rows(o_rc, o_scale);
      wgmma(mma_pv, tOrP, v_group_operand(smem, thr_pv, state_v.index(), 0), o, first_pv);
      first_pv = false;
      warpgroup_wait<1>();
      finish_scores(n);
      hold_until_wait(pr, p.num_heads <= 0, smem.k.data());
      warpgroup_wait<0>();
      pipe_v.consumer_release(state_v);
      ++state_v;
      convert_fragment(s, pr);
      hand_over();
    }
    if (!first_pv) scale_rows(o_rc, o_scale);
    wgmma(mma_pv, tOrP, v_group_operand(smem, thr_pv, state_v.index(), 0), o, first_pv);
    warpgroup_wait<0>();
    pipe_v.consumer_release(state_v);
  }

  // Group 1 of the absorbed-MLA tile (t = thread index in the group): O_1 from group 0's P.
  template <class FragO>
  static __device__ void consume_p(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                                   QPipeline& pipe_q, const QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v,
                                   PipelineState& state, int t, FragO& o, int& handoffs) {
    typename Traits::TiledMmaPVss mma_pv;
    auto thr_pv = mma_pv.get_thread_slice(t);
    Tensor sP = make_tensor(make_smem_ptr(smem.p.data()), typename Traits::SmemLayoutP{});
    Tensor tOsP = thr_pv.partition_fragment_A(sP);  // (MMA, MMA_M, MMA_K) descriptors
    Tensor o_rc = make_tensor(o.data(), rowcol_layout(o.layout()));
    constexpr int kRows = decltype(size<0>(o_rc))::value;
    // This group reads neither Q nor K: its arrivals (every consumer thread arrives) follow
    // the buffers' fills, so they count towards the phase group 0 is in.
    pipe_q.consumer_wait(q_state);
    pipe_q.consumer_release(q_state);
    const bool gathered = gathers(p);
    float f[kRows];
    for (int n = w.n_block_max - 1; n >= w.n_block_min; --n) {
      take_factors(smem, f, t, handoffs);
      pipe_k.consumer_wait(state);
      pipe_k.consumer_release(state);
      wait_kv(gathered, pipe_v, state);
      const bool first = n == w.n_block_max - 1;
      if (!first) scale_rows(o_rc, f);
      wgmma(mma_pv, tOsP, v_group_operand(smem, thr_pv, state.index(), 1), o, first);
      warpgroup_wait<0>();
      release_p(smem);
      pipe_v.consumer_release(state);
      ++state;
    }
  }
};

}  // namespace sgl_fa3::sm90
