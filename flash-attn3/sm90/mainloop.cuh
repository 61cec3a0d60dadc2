// Hopper main loop: TMA loads (producer) and wgmma + online softmax (consumers).
//
// Producer (one thread): Q into the next of its kQStages buffers, then for key blocks n = n_max - 1
// down to n_min, K_n and V_n into the next stage of their own pipelines (K and V are separate so Q K^T of a block can start before
// its V has landed). Blocks are walked high to low: the causal / window edge comes first, so only
// the first and last few blocks take the per-element mask.
//
// Consumer warp group g (rows 64 g .. 64 g + 63 of the tile), per key block, software-pipelined:
//   issue S_n = Q K_n^T           (async wgmma, smem x smem)
//   rescale O by block n + 1's factor (overlaps the Q K^T wgmma)
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
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GmemTensorOut{}, typename Traits::SmemLayoutOBox{}));
  TmaQ q;
  TmaK k;
  TmaV v;
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
  using Work = TileWork<Traits::kBlockM, Traits::kBlockN>;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  static constexpr int kD = Traits::kD, kDV = Traits::kDV;

  // The shared-memory Q buffer of a Q pipeline stage.
  static __device__ Element* q_buffer(typename Traits::SharedStorage& smem, const QState& q_state) {
    return smem.q.data() + q_state.index() * Traits::kQElems;
  }

  // Run by the 32 lanes of the producer warp for each tile with keys; lane 0 issues the copies.
  static __device__ void produce(const FwdParams& p, const TmaDescriptors<Traits>& tma,
                                 typename Traits::SharedStorage& smem, const Work& w, QPipeline& pipe_q,
                                 QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v, PipelineState& state,
                                 int lane) {
    const auto gmem_shape = [](int rows, int dim, int heads, int batch) { return make_shape(rows, dim, heads, batch); };
    Tensor mQ = tma.q.get_tma_tensor(gmem_shape(p.q_tensor_rows, kD, p.num_heads, p.q_tensor_batch));
    Tensor mK = tma.k.get_tma_tensor(gmem_shape(p.k_tensor_rows, kD, p.num_heads_k, p.k_tensor_batch));
    Tensor mV = tma.v.get_tma_tensor(gmem_shape(p.k_tensor_rows, kDV, p.num_heads_k, p.k_tensor_batch));
    const int q_batch = p.cu_seqlens_q ? 0 : w.batch;
    const int kv_batch = p.cu_seqlens_k ? 0 : w.seq.b_kv;
    // (kBlockM, kD) tile of Q; (kBlockN, kD|kDV, n) blocks of K and V.
    Tensor gQ = local_tile(domain_offset(make_coord(w.seq.q_start, _0{}), mQ(_, _, w.head, q_batch)),
                           Shape<Int<kBlockM>, Int<kD>>{}, make_coord(w.m_block, _0{}));
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

    auto load_kv = [&](int n) {
      pipe_k.producer_acquire(state);
      if (lane == 0) copy(tma.k.with(*pipe_k.producer_get_barrier(state), 0), tKg(_, n), tKs(_, state.index()));
      pipe_v.producer_acquire(state);
      if (lane == 0) copy(tma.v.with(*pipe_v.producer_get_barrier(state), 0), tVg(_, n), tVs(_, state.index()));
      ++state;
    };
    auto load_q = [&] {
      pipe_q.producer_acquire(q_state);
      Tensor sQ = make_tensor(make_smem_ptr(q_buffer(smem, q_state)), typename Traits::SmemLayoutQ{});
      auto part_q = tma_partition(tma.q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
      if (lane == 0) copy(tma.q.with(*pipe_q.producer_get_barrier(q_state), 0), get<0>(part_q), get<1>(part_q));
      ++q_state;
    };
    // With two Q buffers Q goes first (its buffer was freed a tile ago). With one, the first
    // K/V block streams in while the consumers finish the previous tile, and Q waits until they
    // no longer read the previous Q (nor, when O lives in Q's bytes, the previous O).
    int n = w.n_block_max - 1;
    if constexpr (Traits::kQStages > 1) load_q();
    load_kv(n);
    if constexpr (Traits::kQStages == 1) load_q();
    for (--n; n >= w.n_block_min; --n) load_kv(n);
  }

  // Runs the key blocks of the tile for this consumer thread (index among all consumer threads).
  // o needs no initial value; on return it holds the unnormalised output and softmax the row
  // statistics.
  // q_state: this tile's Q buffer. Unless O is staged in Q's bytes (then the kernel releases Q
  // after the epilogue), the consumers release Q as soon as their last Q K^T has completed.
  template <class FragO, class Softmax>
  static __device__ void consume(const FwdParams& p, typename Traits::SharedStorage& smem, const Work& w,
                                 QPipeline& pipe_q, const QState& q_state, Pipeline& pipe_k, Pipeline& pipe_v,
                                 PipelineState& state, int thread_idx, FragO& o, Softmax& softmax) {
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

    // Coordinates of the thread's score elements within the tile, and its rows' key bounds.
    Tensor coords = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor coords_rc = make_tensor(coords.data(), rowcol_layout(coords.layout()));
    int lo[kRows], hi[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) w.row_bounds(w.row0 + get<0>(coords_rc(i, 0)), lo[i], hi[i]);

    const bool softcap = p.softcap > 0.f;
    const float softcap_in = softcap ? p.softmax_scale / p.softcap : 0.f;
    // Scores of block n -> masked scores (in place).
    auto score_transform = [&](int n) {
      if (softcap) {
#pragma unroll
        for (int i = 0; i < size(s); ++i) s(i) = tanhf(s(i) * softcap_in);
      }
      if (w.block_needs_mask(n)) {
        const int key0 = n * kBlockN;
#pragma unroll
        for (int i = 0; i < kRows; ++i)
#pragma unroll
          for (int j = 0; j < size<1>(s_rc); ++j) {
            const int key = key0 + get<1>(coords_rc(i, j));
            if (key < lo[i] || key > hi[i]) s_rc(i, j) = -INFINITY;
          }
      }
    };
    auto rescale_o = [&](const float(&o_scale)[kRows]) {
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < size<1>(o_rc); ++j) o_rc(i, j) *= o_scale[i];
    };
    // Ping-pong: wait for this group's turn before issuing wgmmas, pass it on after.
    const int group = thread_idx / 128;
    auto take_turn = [&] {
      if constexpr (Traits::kPingPong)
        cutlass::arch::NamedBarrier::sync(256, int(BarrierId::kScheduler) + group);
    };
    auto pass_turn = [&] {
      if constexpr (Traits::kPingPong)
        cutlass::arch::NamedBarrier::arrive(256, int(BarrierId::kScheduler) + (group + 1) % Traits::kConsumerGroups);
    };
    auto release_q = [&](int n) {
      if (!Traits::kOInQ && n == w.n_block_min) pipe_q.consumer_release(q_state);
    };

    pipe_q.consumer_wait(q_state);
    PipelineState state_v = state;
    float o_scale[kRows];
    bool first_pv = true;

    int n = w.n_block_max - 1;
    pipe_k.consumer_wait(state);
    take_turn();
    wgmma(mma_qk, tSrQ, tSrK(_, _, _, state.index()), s, true);
    pass_turn();
    warpgroup_wait<0>();
    release_q(n);
    pipe_k.consumer_release(state);
    ++state;
    score_transform(n);
    softmax.update(s_rc, o_scale);
    convert_fragment(s, pr);
    for (--n; n >= w.n_block_min; --n) {
      pipe_k.consumer_wait(state);
      pipe_v.consumer_wait(state_v);
      take_turn();
      wgmma(mma_qk, tSrQ, tSrK(_, _, _, state.index()), s, true);
      // O holds nothing before the first P.V; after, rescale it by block n + 1's factor while
      // the tensor cores run Q K_n^T.
      if (!first_pv) rescale_o(o_scale);
      wgmma(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), o, first_pv);
      first_pv = false;
      pass_turn();
      warpgroup_wait<1>();
      release_q(n);
      pipe_k.consumer_release(state);
      ++state;
      score_transform(n);
      softmax.update(s_rc, o_scale);
      hold_until_wait(pr, p.num_heads <= 0, smem.k.data());
      warpgroup_wait<0>();
      pipe_v.consumer_release(state_v);
      ++state_v;
      convert_fragment(s, pr);
    }
    pipe_v.consumer_wait(state_v);
    take_turn();
    if (!first_pv) rescale_o(o_scale);
    wgmma(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), o, first_pv);
    pass_turn();
    warpgroup_wait<0>();
    pipe_v.consumer_release(state_v);
  }
};

}  // namespace sgl_fa3::sm90
