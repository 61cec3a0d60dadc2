// Hopper (sm90a) forward kernel: warp-specialized, TMA + wgmma.
//
// One CTA = one tile of kBlockM query rows of one head of one batch row; tiles are issued
// longest first (highest m_block first, which for causal masks has the most keys).
// Warp group 0 produces: after giving up registers, one thread issues the TMA loads of Q and of
// the K/V blocks into kStages-deep pipelines (mbarrier transaction counts). Warp groups 1..G
// consume: each takes 64 query rows, runs the main loop (mainloop.cuh) with the registers the
// producer gave up, then the epilogue (epilogue.cuh).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "../params.h"
#include "epilogue.cuh"
#include "mainloop.cuh"
#include "softmax.cuh"
#include "tile.cuh"
#include "traits.cuh"

namespace sgl_fa3::sm90 {

template <class Traits>
struct KernelArgs {
  FwdParams params;
  TmaDescriptors<Traits> tma;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) fwd_kernel(const __grid_constant__ KernelArgs<Traits> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Pipeline = typename Traits::Pipeline;
  using Loop = Mainloop<Traits>;
  extern __shared__ char smem_buf[];
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(smem_buf);
  const FwdParams& p = args.params;

  const int m_block = int(gridDim.x) - 1 - int(blockIdx.x);
  const typename Loop::Work w(p, m_block, int(blockIdx.y), int(blockIdx.z));
  if (!w.has_rows()) return;  // the whole CTA: a tile past this batch row's queries
  const Role role = threadIdx.x < 128 ? Role::kProducer : Role::kConsumer;

  typename Pipeline::Params pipe_params;
  pipe_params.role = role == Role::kProducer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kConsumerThreads;
  if (threadIdx.x == 0) smem.barrier_q.init(1);
  pipe_params.transaction_bytes = Traits::kBytesK;
  Pipeline pipe_k(smem.pipe_k, pipe_params, Shape<_1, _1, _1>{});
  pipe_params.transaction_bytes = Traits::kBytesV;
  Pipeline pipe_v(smem.pipe_v, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before any thread uses them

  if (role == Role::kProducer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0 && w.has_keys()) {
      auto state = cutlass::make_producer_start_state<Pipeline>();
      Loop::produce(p, args.tma, smem, w, pipe_k, pipe_v, state);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int thread_idx = int(threadIdx.x) - 128;
    Tensor o = partition_fragment_C(typename Traits::TiledMmaPV{}, Shape<Int<Traits::kBlockM>, Int<Traits::kDV>>{});
    constexpr int kRows = decltype(size<0>(make_tensor(o.data(), rowcol_layout(o.layout()))))::value;
    constexpr float kLog2e = 1.4426950408889634f;
    OnlineSoftmax<kRows> softmax((p.softcap > 0.f ? p.softcap : p.softmax_scale) * kLog2e);
    clear(o);
    if (w.has_keys()) {
      typename Loop::PipelineState state;
      Loop::consume(p, smem, w, pipe_k, pipe_v, state, thread_idx, o, softmax);
    }
    float o_scale[kRows], lse[kRows];
    softmax.finalize(p.sinks ? p.sinks[w.head] : -INFINITY, o_scale, lse);
    Epilogue<Traits>::store(p, smem, w, thread_idx, o, o_scale, lse);
  }
#endif
}

}  // namespace sgl_fa3::sm90
