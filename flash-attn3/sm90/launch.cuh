// Launch of the Hopper forward kernel: the tile table, the TMA descriptors of a call, and one
// launcher per instantiation.
#pragma once

#include "../registry.h"
#include <algorithm>

#include "fwd_kernel.cuh"
#include "scheduler.cuh"

namespace sgl_fa3::sm90 {

// Tiles per (d, dv): kM rows (64 per consumer warp group), kN keys per block, K/V stages, and
// whether the consumer groups take turns issuing wgmmas (ping-pong: within 2% on d128, +1-5% on
// d64 with three groups, H100).
// Shared memory holds Q, kStages K and V blocks (and O when it cannot reuse Q's bytes) within
// 227 KB; the consumers' registers hold S (kN / 2 per thread), P and O (dv / 2 per thread).
//   d64:   three consumer groups (192 rows): with small head dims the softmax, not the MMA, is
//          the limit, and more rows per K/V block amortise the loads.
//          Two stages: a third or fourth (room for both) read +1-2.5% at 1k-4k and -1..-3% at
//          16k and causal 512 (H100, bf16, scripts/ab_prefill.py): not worth an instantiation.
//   d96:   three stages (216 KB with both Q buffers and O): the next tile's first blocks load
//          under the current tile's last ones; H100, bf16: +1-4% at 512-4k, causal 16k +1%,
//          non-causal 16k -1.6% (one reading).
//   d128:  128 x 128: S + O + P = 64 + 64 + 32 registers per thread next to the addressing.
//          Two stages: a third (224 KB) has to stage O in Q's bytes, giving up the second Q
//          buffer and the deferred epilogue: +0.6-2.5% at 1k-4k, -2.5..-4% at 512, causal 1k
//          and non-causal 16k; 128 x 96 with three stages and 192 x 64 with three groups read
//          0.95 and 0.94 in geomean (H100, bf16, scripts/ab_prefill.py).
//   d192:  kN 96 (112 with dv 128) keeps two stages within the shared memory.
//   d256:  128 x 80: two stages of 80-key K and V blocks plus Q fill the 227 KB.
//   64 -> 256 / 512 (absorbed MLA, qv; kQv): 64 rows shared by both groups, each holding half of
//          O (64 / 128 registers per thread). Q + Qv stay resident (40 / 72 KB); a K/V stage is
//          kN x (64 + dv): dv 512 fits two stages of 64 keys, dv 256 two of 128.
// kLazyRescale (O rescaled only when a row's running max moved by more than a slack,
// OnlineSoftmax::update) where a thread's O columns are at least twice its scores (d256 128
// against 40, d192 96 against 48), so the skipped multiplies outweigh the vote. H100, bf16,
// 512-16k keys, against rescaling every block: d256 +0-8% (non-causal 16k +6-7.6%), d192 -2.2
// to +2.6% over two runs; d64 -2.5 to -3.7%, d128 0 to -2%, d96 -1.5 to +1%. The absorbed-MLA
// tile passes the factors to its second group and keeps rescaling.
// clang-format off
template <int kD, int kDV> struct Tile;
template <> struct Tile<64, 64>   { static constexpr int kM = 192, kN = 128, kStages = 2; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = false; };
template <> struct Tile<96, 96>   { static constexpr int kM = 128, kN = 128, kStages = 3; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = false; };
template <> struct Tile<128, 128> { static constexpr int kM = 128, kN = 128, kStages = 2; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = false; };
template <> struct Tile<192, 192> { static constexpr int kM = 128, kN = 96,  kStages = 2; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = true;  };
template <> struct Tile<192, 128> { static constexpr int kM = 128, kN = 112, kStages = 2; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = false; };
template <> struct Tile<256, 256> { static constexpr int kM = 128, kN = 80,  kStages = 2; static constexpr bool kPingPong = true,  kQv = false, kLazyRescale = true;  };
template <> struct Tile<64, 256>  { static constexpr int kM = 64,  kN = 128, kStages = 2; static constexpr bool kPingPong = false, kQv = true,  kLazyRescale = false; };
template <> struct Tile<64, 512>  { static constexpr int kM = 64,  kN = 64,  kStages = 2; static constexpr bool kPingPong = false, kQv = true,  kLazyRescale = false; };
// clang-format on

template <typename CudaElement, int kD, int kDV>
using TraitsFor = Traits<CudaElement, kD, kDV, Tile<kD, kDV>::kM, Tile<kD, kDV>::kN, Tile<kD, kDV>::kStages,
                         Tile<kD, kDV>::kPingPong, Tile<kD, kDV>::kQv, Tile<kD, kDV>::kLazyRescale>;

// A TMA box cannot have a zero stride; a mode of extent 1 never moves, so any aligned stride does.
inline int64_t tma_stride(int extent, int64_t stride, int64_t fallback) { return extent == 1 ? fallback : stride; }

// Tile order (scheduler.cuh): how many (head, batch row) pairs are drawn together, the key split
// and then the m_block outermost. Where tiles of one pair differ in length (a key range that ends
// at the row: causal, or a right window with no left bound), drawing the longest tile of every
// pair of a section first keeps the longest ones out of the last wave, and a section whose K/V
// fit in kSectionL2Bytes still shares them in L2. Budget sweep (H200, bf16 causal, against one
// pair per section): 12 MB d64 +1-7%, d128 +0.5-2%, d256 +0-1.5% over seqlen 512-16k; 24 MB loses
// 2-3% at d256 and d128 16k (the longer working set), 2-6 MB gain less; H100 at 12 MB: causal
// geomean +1.0% (d64 512 +6%, d256 16k +3%, d256 1k -2.5%). Equal tiles, and key splits (whose
// row tiles must run side by side: absorbed-MLA decode halved when they did not), keep one pair,
// as do calls whose rows differ in length (varlen, seqused, paged or appended keys: measured only
// on dense batches, where every pair has the same tiles and seqlen_k sizes a section exactly).
inline constexpr int64_t kSectionL2Bytes = int64_t(12) << 20;

template <class Traits>
int pairs_per_section(const FwdParams& p, int splits) {
  const bool lengths_differ = p.window_right >= 0 && p.window_left < 0;
  const bool dense = !p.cu_seqlens_q && !p.cu_seqlens_k && !p.seqused_q && !p.seqused_k && !p.page_table &&
                     !p.leftpad_k && !p.cu_seqlens_k_new && p.seqlen_k_new == 0;
  if (!lengths_differ || !dense || splits > 1) return 1;
  // K/V bytes of one pair; without pack_gqa the query heads of a KV group read the same K/V.
  const int heads_per_kv = p.pack_gqa ? 1 : p.num_heads / p.num_heads_k;
  const int64_t pair_bytes = std::max<int64_t>(
      int64_t(p.seqlen_k) * (Traits::kD + Traits::kDV) * int64_t(sizeof(typename Traits::Element)) / heads_per_kv, 1);
  return int(std::clamp<int64_t>(kSectionL2Bytes / pair_bytes, 1, INT32_MAX));
}

template <class Traits>
cudaError_t run_fwd(const FwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  const auto gmem = [](const void* ptr, int rows, int dim, int heads, int batch, int64_t row_stride,
                       int64_t head_stride, int64_t batch_stride) {
    return make_tensor(make_gmem_ptr(static_cast<const Element*>(ptr)), make_shape(rows, dim, heads, batch),
                       make_stride(tma_stride(rows, row_stride, dim), _1{}, tma_stride(heads, head_stride, dim),
                                   tma_stride(batch, batch_stride, dim)));
  };
  KernelArgs<Traits> args{p, {}, {}};
  if constexpr (!Traits::kQv) {  // the absorbed-MLA tile stores O from registers
    const auto gO = make_tensor(make_gmem_ptr(static_cast<Element*>(p.o)),
                                make_shape(p.q_tensor_rows, Traits::kDV, p.num_heads, p.q_tensor_batch),
                                make_stride(tma_stride(p.q_tensor_rows, p.o_row_stride, Traits::kDV), _1{},
                                            tma_stride(p.num_heads, p.o_head_stride, Traits::kDV),
                                            tma_stride(p.q_tensor_batch, p.o_batch_stride, Traits::kDV)));
    args.tma.o = make_tma_copy(SM90_TMA_STORE{}, gO, typename Traits::SmemLayoutOBox{});
  }
  args.tma.q = make_tma_copy(SM90_TMA_LOAD{},
                             gmem(p.q, p.q_tensor_rows, Traits::kD, p.num_heads, p.q_tensor_batch, p.q_row_stride,
                                  p.q_head_stride, p.q_batch_stride),
                             typename Traits::SmemLayoutQ{}, Shape<Int<Traits::kBlockM>, Int<Traits::kD>>{}, _1{});
  if constexpr (Traits::kQv) {
    if (p.qv == nullptr) return cudaErrorInvalidValue;  // the absorbed-MLA tile needs qv (the binding routes)
    args.tma.qv = make_tma_copy(SM90_TMA_LOAD{},
                                gmem(p.qv, p.q_tensor_rows, Traits::kDV, p.num_heads, p.q_tensor_batch,
                                     p.qv_row_stride, p.qv_head_stride, p.qv_batch_stride),
                                typename Traits::SmemLayoutQv{}, Shape<Int<Traits::kBlockM>, Int<Traits::kDV>>{}, _1{});
  }
  if (!Mainloop<Traits>::gathers(p)) {  // gathered K/V rows need no K/V descriptors
    const auto gK = gmem(p.k, p.k_tensor_rows, Traits::kD, p.num_heads_k, p.k_tensor_batch, p.k_row_stride,
                         p.k_head_stride, p.k_batch_stride);
    const auto gV = gmem(p.v, p.k_tensor_rows, Traits::kDV, p.num_heads_k, p.k_tensor_batch, p.v_row_stride,
                         p.v_head_stride, p.v_batch_stride);
    // Paged: the pool read as (page_size, d, heads, pages) in boxes of kPageBox rows, or of
    // kSmallPageBox rows where the pages are not whole large boxes.
    if (p.page_table && !Mainloop<Traits>::small_page_boxes(p)) {
      args.tma.k_page = make_tma_copy(SM90_TMA_LOAD{}, gK, typename Traits::SmemLayoutKBox{},
                                      Shape<Int<Traits::kPageBox>, Int<Traits::kD>>{}, _1{});
      args.tma.v_page = make_tma_copy(SM90_TMA_LOAD{}, gV, typename Traits::SmemLayoutVBox{},
                                      Shape<Int<Traits::kPageBox>, Int<Traits::kDV>>{}, _1{});
    } else if (p.page_table) {
      args.tma.k_page_small = make_tma_copy(SM90_TMA_LOAD{}, gK, typename Traits::SmemLayoutKSmallBox{},
                                            Shape<Int<Traits::kSmallPageBox>, Int<Traits::kD>>{}, _1{});
      args.tma.v_page_small = make_tma_copy(SM90_TMA_LOAD{}, gV, typename Traits::SmemLayoutVSmallBox{},
                                            Shape<Int<Traits::kSmallPageBox>, Int<Traits::kDV>>{}, _1{});
    } else {
      args.tma.k = make_tma_copy(SM90_TMA_LOAD{}, gK, take<0, 2>(typename Traits::SmemLayoutK{}),
                                 Shape<Int<Traits::kBlockN>, Int<Traits::kD>>{}, _1{});
      args.tma.v = make_tma_copy(SM90_TMA_LOAD{}, gV, take<0, 2>(typename Traits::SmemLayoutV{}),
                                 Shape<Int<Traits::kBlockN>, Int<Traits::kDV>>{}, _1{});
    }
  }

  const cudaError_t err = opt_in_shared_memory<&fwd_kernel<Traits>, Traits::kSmemBytes>();
  if (err != cudaSuccess) return err;
  // Tiles of kBlockM rows per (head, batch row); with pack_gqa per (KV head, batch row), whose
  // rows are the queries of the KV group's heads.
  const int group = p.pack_gqa ? p.num_heads / p.num_heads_k : 1;
  const int units = p.pack_gqa ? p.num_heads_k : p.num_heads;
  const int64_t m_blocks = (int64_t(p.seqlen_q) * group + Traits::kBlockM - 1) / Traits::kBlockM;
  // Split-KV (the absorbed-MLA tile only; the binding plans it): num_splits tiles per row tile.
  if (p.o_partial && !Traits::kQv) return cudaErrorInvalidValue;
  const int splits = p.o_partial ? p.num_splits : 1;
  const int64_t tiles = m_blocks * splits * units * p.batch;
  if (tiles == 0) return cudaSuccess;
  if (tiles > INT32_MAX - 2 * 1024) return cudaErrorInvalidValue;  // tile indices are 32-bit
  const TileScheduler scheduler(int(m_blocks), splits, units, p.batch, pairs_per_section<Traits>(p, splits),
                                p.tile_counter);
  // Persistent: one CTA per SM (the tile uses the whole shared memory), each walking the tiles;
  // sm_margin SMs stay free (at least one CTA runs).
  const dim3 grid(unsigned(std::min<int64_t>(tiles, std::max(p.num_sms - p.sm_margin, 1))));
  args.scheduler = scheduler;
  fwd_kernel<Traits><<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

template <typename CudaElement, int kD, int kDV>
constexpr FwdKernel kernel_entry() {
  using T = TraitsFor<CudaElement, kD, kDV>;
  return FwdKernel{&run_fwd<T>, T::kBlockM, T::kBlockN, T::kSmemBytes, false};
}

template <typename CudaElement>
constexpr DType dtype_of() {
  return std::is_same_v<CudaElement, __half> ? DType::kFloat16 : DType::kBFloat16;
}

// Registers the Hopper prefill kernel of (ELEMENT, HEAD_DIM, HEAD_DIM_V) when the library loads
// (this family has no few-row tiles: decode and GQA-packed short queries run on the portable family).
#define SGL_FA3_REGISTER_SM90_FWD(ELEMENT, HEAD_DIM, HEAD_DIM_V)                                                  \
  static const ::sgl_fa3::FwdRegistration sgl_fa3_sm90_fwd_registration{                                        \
      ::sgl_fa3::KernelKey{::sgl_fa3::Family::kSm90, ::sgl_fa3::sm90::dtype_of<ELEMENT>(), HEAD_DIM, HEAD_DIM_V}, \
      ::sgl_fa3::FwdKernels{::sgl_fa3::sm90::kernel_entry<ELEMENT, HEAD_DIM, HEAD_DIM_V>(), ::sgl_fa3::FwdKernel{},  \
                            ::sgl_fa3::FwdKernel{}}};

}  // namespace sgl_fa3::sm90
