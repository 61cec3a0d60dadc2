// Hopper (sm90a) forward kernel: warp-specialized, TMA + wgmma.
//
// Persistent: one CTA per SM walks tiles of kBlockM query rows of one head (or, with pack_gqa,
// of the heads of one KV group) of one batch row (scheduler.cuh: drawn from a global counter).
// Warp group 0 produces: after giving up registers, one warp issues the TMA loads of Q (kQStages
// buffers) and of the K/V blocks (kStages-deep) into mbarrier pipelines, running ahead into the
// next tile while the consumers finish the current one, and on two-group tiles a second warp
// stores the consumers' staged O and LSE (Epilogue::serve); with gathered paged k/v the whole
// warp group stays and copies the K/V rows with cp.async, and with packed GQA rows the Q rows. Warp
// groups 1..G consume: each takes 64 query rows of the tile (on the absorbed-MLA tile both take
// the same 64 rows and split O's columns), runs the main loop (mainloop.cuh; where the tile's
// rows are not a whole number of key blocks, over the key blocks its own rows see) with the
// registers the producer gave up, then the epilogue (epilogue.cuh): on two-group tiles with O in
// its own shared-memory bytes, once the next tile's first Q K^T is on the tensor cores, handing
// the staged rows to the store warp where there is one.
// Tiles whose rows see no key skip the pipelines: the consumers write their empty rows directly.
// The producer draws each next tile and hands its index to the consumers through shared memory.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "../params.h"
#include "epilogue.cuh"
#include "mainloop.cuh"
#include "scheduler.cuh"
#include "softmax.cuh"
#include "tile.cuh"
#include "traits.cuh"

namespace sgl_fa3::sm90 {

template <class Traits>
struct KernelArgs {
  FwdParams params;
  TmaDescriptors<Traits> tma;
  TileScheduler scheduler;
};

// A pipeline filled by TMA: thread 0 (the producer warp's lane 0) arms its barriers with the
// transaction bytes. One filled by cp.async (paged K/V, packed GQA Q): no thread arms it, each
// of the 128 producer threads arrives once its copies have landed. All consumer threads release.
template <class Pipeline, class Traits>
__device__ typename Pipeline::Params pipeline_params(Role role, uint32_t transaction_bytes, bool cp_async = false) {
  typename Pipeline::Params params;
  params.role = role == Role::kProducer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  params.is_leader = threadIdx.x == 0 && !cp_async;
  params.num_consumers = Traits::kConsumerThreads;
  params.num_producers = cp_async ? kProducerThreads : 1;
  params.transaction_bytes = transaction_bytes;
  return params;
}

// One tile of the absorbed-MLA kernel for a consumer thread: group 0 scores and hands P over,
// group 1 accumulates from it (mainloop.cuh); the final row factors pass the same way, then each
// group stores its half of O's columns.
template <class Traits, class QPipeline, class QState, class Pipeline, class PipelineState>
__device__ void consume_split_dv(const FwdParams& p, typename Traits::SharedStorage& smem,
                                 const typename Mainloop<Traits>::Work& w, QPipeline& pipe_q, const QState& q_state,
                                 Pipeline& pipe_k, Pipeline& pipe_v, PipelineState& state, int thread_idx,
                                 float score_to_log2, int& handoffs) {
  using Loop = Mainloop<Traits>;
  const int group = thread_idx / 128, t = thread_idx % 128;
  Tensor o = partition_fragment_C(typename Traits::TiledMmaPV{}, Shape<Int<Traits::kBlockM>, Int<Traits::kDVGroup>>{});
  constexpr int kRows = decltype(size<0>(make_tensor(o.data(), rowcol_layout(o.layout()))))::value;
  float o_scale[kRows], lse[kRows];
  if (group == 0) {
    OnlineSoftmax<kRows, Traits::kLazyRescale> softmax(score_to_log2);
    Loop::consume_scores(p, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, t, o, softmax, handoffs);
    float sink[kRows];
    Epilogue<Traits>::row_sinks(p, w, t, sink);
    softmax.finalize(sink, o_scale, lse);
    Loop::wait_p_empty(smem, handoffs);
    Loop::pass_factors(smem, o_scale, t, handoffs);
  } else {
    Loop::consume_p(p, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, t, o, handoffs);
    Loop::take_factors(smem, o_scale, t, handoffs);
    Loop::release_p(smem);
  }
  Epilogue<Traits>::store_split_dv(p, w, thread_idx, o, o_scale, lse);
}

// A finished tile's epilogue, held until the consumer group has issued the next tile's first
// Q K^T (Traits::kDeferEpilogue): the tile, this thread's normalised output fragment and its
// rows' LSE. Normalising O first frees the accumulator, which the next tile's first P.V
// overwrites, and keeps wgmma-written registers out of the overlapped code (ptxas would wait for
// the in-flight wgmma before touching them).
template <class Work, class FragOut, int kRows>
struct DeferredStore {
  Work w;
  FragOut out;
  float lse[kRows];
  bool pending = false;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) fwd_kernel(const __grid_constant__ KernelArgs<Traits> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Pipeline = typename Traits::Pipeline;
  using Loop = Mainloop<Traits>;
  extern __shared__ char smem_buf[];
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const FwdParams& p = args.params;

  const Role role = threadIdx.x < kProducerThreads ? Role::kProducer : Role::kConsumer;
  // Paged k/v: key rows are gathered through the page table (cp.async by the whole producer
  // warp group); otherwise one TMA box per block. Packed GQA rows of Q are gathered likewise.
  const bool gather = Loop::gathers(p), whole_group = Loop::whole_producer_group(p);
  if (threadIdx.x == 0) {
    smem.tile_full.init(1);
    smem.tile_empty.init(Traits::kConsumerThreads);
    cutlass::arch::ClusterBarrier::init(&smem.v_tail_loaded, 1);
    if constexpr (Traits::kDeferEpilogue) {
      for (int g = 0; g < Traits::kConsumerGroups; ++g) {
        smem.o_full[g].init(128);
        smem.o_empty[g].init(32);  // the store warp's lanes
      }
    }
    if constexpr (Traits::kQv) {
      smem.p_full.init(128);
      smem.p_empty.init(128);
    }
  }
  using QPipeline = typename Traits::QPipeline;
  QPipeline pipe_q(smem.pipe_q, pipeline_params<QPipeline, Traits>(role, Traits::kBytesQ, p.pack_gqa),
                   Shape<_1, _1, _1>{});
  Pipeline pipe_k(smem.pipe_k, pipeline_params<Pipeline, Traits>(role, Traits::kBytesK, gather), Shape<_1, _1, _1>{});
  Pipeline pipe_v(smem.pipe_v, pipeline_params<Pipeline, Traits>(role, Traits::kBytesV, gather), Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before any thread uses them

  const TileScheduler& scheduler = args.scheduler;
  const auto tile = [&](int t) {
    int m_block, split, head, batch;
    scheduler.coords(t, m_block, split, head, batch);
    return typename Loop::Work(p, m_block, head, batch, split);
  };
  if (role == Role::kProducer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    const int thread = int(threadIdx.x);
    // Warp-uniform (a shuffle from lane 0 keeps it in a uniform register: the 24-register
    // producer spills when the branches below read threadIdx.x directly).
    const int producer_warp = __shfl_sync(0xffffffff, thread / 32, 0);
    // One warp issues every TMA load; with O staged apart, a second one stores it
    // (Epilogue::serve). Both branches return here: nothing the loads need stays live across.
    if (!whole_group && producer_warp != 0) {
      if (Epilogue<Traits>::has_store_warp(whole_group) && producer_warp == 1)
        Epilogue<Traits>::serve(p, args.tma, smem, thread % 32);
      return;
    }
    auto state = cutlass::make_producer_start_state<Pipeline>();
    auto q_state = cutlass::make_producer_start_state<typename Traits::QPipeline>();
    int handoffs = 0, v_tails = 0;
    for (int t = int(blockIdx.x); t < scheduler.num_tiles;) {
      const typename Loop::Work w = tile(t);
      if (w.has_rows() && w.has_keys()) {
        if (gather) Loop::produce_gathered(p, args.tma, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, thread);
        // TMA K/V with gathered Q rows: warp 0 issues K/V and its part of Q; warps 1-3 only
        // gather Q (they never arrive on the K/V barriers, so they must not wait on them).
        else if (producer_warp == 0)
          Loop::produce(p, args.tma, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, thread, v_tails);
        else Loop::load_q(p, args.tma, smem, w, pipe_q, q_state, thread);
      }
      // Draw the next tile while the consumers work on this one, and publish it to them.
      int next = 0;
      if (thread == 0) {
        next = scheduler.next(int(gridDim.x));
        if (handoffs > 0) smem.tile_empty.wait((handoffs - 1) & 1);  // the previous index was read
        smem.next_tile = next;
        smem.tile_full.arrive();
      }
      ++handoffs;
      if (whole_group) {  // the whole warp group reads it before thread 0 may write the next one
        cutlass::arch::NamedBarrier::sync(kProducerThreads, int(BarrierId::kProducer));
        t = smem.next_tile;
        cutlass::arch::NamedBarrier::sync(kProducerThreads, int(BarrierId::kProducer));
      } else {
        t = __shfl_sync(0xffffffff, next, 0);
      }
    }
    if (whole_group) cute::cp_async_wait<0>();  // no copy outlives its thread
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int thread_idx = int(threadIdx.x) - 128, group = thread_idx / 128;
    constexpr float kLog2e = 1.4426950408889634f;
    const float score_to_log2 = (p.softcap > 0.f ? p.softcap : p.softmax_scale) * kLog2e;
    // The last group hands the first wgmma turn to group 0.
    if (Loop::ping_pong_for(p) && group == Traits::kConsumerGroups - 1)
      cutlass::arch::NamedBarrier::arrive(256, int(BarrierId::kScheduler));  // group 0's own + the passer
    // Absorbed-MLA tile: the P buffer starts empty.
    if constexpr (Traits::kQv) {
      if (group == 1) Loop::release_p(smem);
    }
    [[maybe_unused]] int p_handoffs = 0;  // absorbed-MLA tile: P handoffs of this thread so far
    typename Loop::PipelineState state;
    typename Loop::QState q_state;
    int handoffs = 0;
    // The O accumulator of a tile (unused by the absorbed-MLA tile, which has its own), and a
    // finished tile's output on its way out: stored at once, or with kDeferEpilogue held across
    // into the next tile (each tile's o does not live across).
    using Epi = Epilogue<Traits>;
    const auto new_accumulator = [] {
      return partition_fragment_C(typename Traits::TiledMmaPV{}, Shape<Int<Traits::kBlockM>, Int<Traits::kDV>>{});
    };
    using FragO = decltype(new_accumulator());
    constexpr int kRows = decltype(size<0>(rowcol_layout(FragO{}.layout())))::value;
    DeferredStore<typename Loop::Work, typename Epi::template FragOut<FragO>, kRows> deferred;
    const bool store_warp = Epi::has_store_warp(whole_group);
    int o_handoffs = 0;
    const auto finish_previous = [&] {
      if constexpr (Traits::kDeferEpilogue) {
        if (!deferred.pending) return;
        deferred.pending = false;
        Epi::store(p, args.tma, smem, deferred.w, thread_idx, deferred.out, deferred.lse, store_warp, o_handoffs);
      }
    };
    for (int t = int(blockIdx.x); t < scheduler.num_tiles;) {
      const typename Loop::Work w = tile(t);
      if (w.has_rows()) {
        if (w.has_keys()) {
          if constexpr (Traits::kQv) {
            consume_split_dv<Traits>(p, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, thread_idx, score_to_log2,
                                     p_handoffs);
          } else {
            Tensor o = new_accumulator();
            OnlineSoftmax<kRows, Traits::kLazyRescale> softmax(score_to_log2);
            float o_scale[kRows];
            // The rows' final statistics depend on the scores only: computed while the last
            // P.V runs.
            const auto finalize = [&] {
              float sink[kRows];
              Epi::row_sinks(p, w, thread_idx, sink);
              softmax.finalize(sink, o_scale, deferred.lse);
            };
            const bool saw_keys = Loop::consume(p, smem, w, pipe_q, q_state, pipe_k, pipe_v, state, thread_idx, o,
                                                softmax, finish_previous, finalize);
            if (saw_keys) Epi::normalise(o, o_scale, deferred.out);
            else clear(deferred.out);
            if constexpr (Traits::kDeferEpilogue) {
              deferred.w = w;
              deferred.pending = true;
            } else {
              Epi::store(p, args.tma, smem, w, thread_idx, deferred.out, deferred.lse, store_warp, o_handoffs);
              // O was staged in Q's bytes: each consumer thread arrives on Q's empty barrier
              // after its own reads of O (a one-CTA cluster: every consumer thread arrives).
              if constexpr (Traits::kOInQ) pipe_q.consumer_release(q_state);
            }
          }
          ++q_state;
        } else {  // (a pending epilogue can wait: these rows leave without shared memory)
          Epi::store_empty(p, w, thread_idx);
        }
      }
      smem.tile_full.wait(handoffs & 1);
      t = smem.next_tile;
      smem.tile_empty.arrive();
      ++handoffs;
    }
    finish_previous();
    if (store_warp)
      Epi::hand_back(smem, group, thread_idx % 128 == 0, OStoreJob::kExit, o_handoffs);
    Epi::drain(thread_idx);
  }
#endif
}

}  // namespace sgl_fa3::sm90
