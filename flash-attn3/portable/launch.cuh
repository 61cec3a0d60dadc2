// Launch of the portable forward kernel: the tile table and one launcher per instantiation.
#pragma once

#include <type_traits>

#include "../overlap.cuh"
#include "../registry.h"
#include "fwd_kernel.cuh"

namespace sgl_fa3::portable {

// Tiles per (d, dv): kM, kN, row warps, column warps, Q fragments in registers, K/V stages.
//
// Prefill. With one 16-row slab per warp every K/V fragment loaded by ldmatrix feeds only two
// MMAs and the loop is bound by shared-memory bandwidth, so d64 / d96 / d128 give each warp two
// slabs (kM 128 over 4 warps); the larger head dims cannot hold two slabs of O in registers and
// use 8 warps of one slab. A long key block halves the per-block softmax, O rescale and barrier
// cost: d64 takes kN 128 with Q re-read from smem (S needs the registers Q would hold), d128
// kN 64. Measured on an H200 (bf16) against the previous tiles, 128 / 64 with Q in registers and
// 128 / 32: d64 +5 to +16% non-causal, +6 to +8% causal >= 4k, -5% causal 512; d128 +1 to +9%
// at seqlen >= 1k, -6% causal 512 (tiles of 1-4 key blocks, the diagonal one half masked).
// d128 spills (32 bytes on sm90a, 72 / 96 on sm80; 2 and 4 local loads / stores per key block
// beside its 256 MMAs) and is still the fastest of the tiles measured. d256
// takes kN 32 to stay within the 163 KB of shared memory an A100 block can have. Absorbed MLA
// (64 -> 256/512) splits the output columns over column warps (O would need 128-256 registers
// per thread). Two stages: the next K/V block loads while the current one is computed.
// Swizzled smem rows (see RowTile) for d64 and d128; the other prefill tiles keep padded rows.
//
// Decode (at most 16 rows after GQA packing). One 16-row slab, four warps splitting each key
// block, and three K/V stages (~100 KB) in flight per CTA: two CTAs per SM cover the memory
// latency.
template <int kD, int kDV>
struct PrefillTile;
// clang-format off
// Prefill tiles leave split merging to the combine kernel: a split prefill call is compute-bound,
// its combine a small part of it, and merge code would add to the register pressure of tiles that
// spill already (d128).
// kLazyRescale (skip the O rescale while the running max holds, see fwd_kernel) only where it
// measured faster. H100, bf16, 512-16k keys, against rescaling every block: d128 (128 O
// multiplies a block against 64 exponentials) +0-3%; d64 (64 against 128) -2 to -5%, d96 0 to
// -4%; d192 / d256 (one slab per warp, 96 / 128 against 32 / 16) -1.4 to +0.3%.
template <> struct PrefillTile<64, 64>   { static constexpr int kM = 128, kN = 128, kRowWarps = 4, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = true, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<96, 96>   { static constexpr int kM = 128, kN = 64, kRowWarps = 4, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<128, 128> { static constexpr int kM = 128, kN = 64, kRowWarps = 4, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = true, kMergeSplits = false, kLazyRescale = true; };
template <> struct PrefillTile<192, 192> { static constexpr int kM = 128, kN = 64, kRowWarps = 8, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<192, 128> { static constexpr int kM = 128, kN = 64, kRowWarps = 8, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<256, 256> { static constexpr int kM = 128, kN = 32, kRowWarps = 8, kColWarps = 1, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<64, 256>  { static constexpr int kM = 64,  kN = 64, kRowWarps = 4, kColWarps = 2, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };
template <> struct PrefillTile<64, 512>  { static constexpr int kM = 64,  kN = 32, kRowWarps = 4, kColWarps = 2, kKeyWarps = 1, kStages = 2; static constexpr bool kQInRegs = false, kSwizzle = false, kMergeSplits = false, kLazyRescale = false; };

template <int kD, int kDV>
struct DecodeTile {
  static constexpr int kM = 16, kRowWarps = 1;
  // Four warps split each key block (no duplicated work, softmax statistics merged at the end);
  // dv 512 cannot park four warps' O in smem and splits its output columns instead.
  static constexpr int kKeyWarps = kDV <= 256 ? 4 : 1;
  static constexpr int kColWarps = kDV <= 256 ? 1 : 4;
  static constexpr int kN = kD + kDV >= 384 && kKeyWarps == 1 ? 32 : 64;  // three stages near 100 KB
  static constexpr int kStages = kD + kDV > 600 ? 2 : 3;
  static constexpr bool kQInRegs = kD <= 128;
  static constexpr bool kSwizzle = true;  // memory-bound: whole 128-byte segments per cp.async
  // The last split CTA of a tile merges the splits: no combine grid after a latency-bound call.
  static constexpr bool kMergeSplits = true;
  static constexpr bool kLazyRescale = false;
};

// Short queries (17-64 rows after GQA packing: speculative decoding, large GQA groups, short
// chunks): one 16-row slab per warp, four row warps, the whole key block per warp, two stages so
// that two CTAs fit on an SM. Still memory-bound, so swizzled rows. Where the prefill tile
// already has at most 64 rows (absorbed MLA, dv >= 256) it serves short queries too.
template <int kD, int kDV>
struct ShortQueryTileOwn {
  static constexpr int kM = 64, kRowWarps = 4, kColWarps = 1, kKeyWarps = 1;
  static constexpr int kN = kD + kDV >= 384 ? 32 : 64;
  static constexpr int kStages = 2;
  static constexpr bool kQInRegs = kD <= 128;
  static constexpr bool kSwizzle = true;
  static constexpr bool kMergeSplits = true;
  static constexpr bool kLazyRescale = false;
};
// clang-format on
template <int kD, int kDV>
using ShortQueryTile =
    std::conditional_t<(PrefillTile<kD, kDV>::kM <= 64), PrefillTile<kD, kDV>, ShortQueryTileOwn<kD, kDV>>;

template <typename Element, int kD, int kDV, typename Tile>
using TraitsFor = FwdTraits<Element, kD, kDV, Tile::kM, Tile::kN, Tile::kRowWarps, Tile::kColWarps, Tile::kKeyWarps,
                            Tile::kQInRegs, Tile::kStages, Tile::kSwizzle, Tile::kMergeSplits,
                            Tile::kLazyRescale>;

template <typename Traits>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  constexpr int kSmem = Traits::kSmemBytes;
  if constexpr (kSmem > 48 * 1024) {  // more than the default 48 KB of dynamic shared memory
    const cudaError_t err = opt_in_shared_memory<&fwd_kernel<Traits>, kSmem>();
    if (err != cudaSuccess) return err;
  }
  const PortableTiles tiles(params, Traits::kBlockM);
  const dim3 grid(unsigned(tiles.m_blocks * params.num_splits), tiles.heads, tiles.batch);
  if (grid.x == 0 || grid.z == 0) return cudaSuccess;
  // Split counters: only for a tile that merges its splits, one per tile.
  if (params.split_counters != nullptr && (!Traits::kMergeSplits || tiles.count() > params.split_counter_slots))
    return cudaErrorInvalidValue;
  const OverlappedLaunch launch(grid, dim3(Traits::kNThreads), kSmem, stream, params.pdl);
  return cudaLaunchKernelEx(&launch.config, fwd_kernel<Traits>, params);
}

template <typename Element, int kD, int kDV, typename Tile>
constexpr FwdKernel kernel_entry() {
  return FwdKernel{&run_fwd<TraitsFor<Element, kD, kDV, Tile>>, Tile::kM, Tile::kN,
                   TraitsFor<Element, kD, kDV, Tile>::kSmemBytes, Tile::kMergeSplits};
}

template <typename Element>
constexpr DType dtype_of() {
  return std::is_same_v<Element, __half> ? DType::kFloat16 : DType::kBFloat16;
}

// Registers the prefill, short-query and decode kernels of (Element, kD, kDV) when the library loads.
#define SGL_FA3_REGISTER_PORTABLE_FWD(ELEMENT, HEAD_DIM, HEAD_DIM_V)                                            \
  static const ::sgl_fa3::FwdRegistration sgl_fa3_portable_fwd_registration{                                  \
      ::sgl_fa3::KernelKey{::sgl_fa3::Family::kPortable, ::sgl_fa3::portable::dtype_of<ELEMENT>(), HEAD_DIM,   \
                           HEAD_DIM_V},                                                                       \
      ::sgl_fa3::FwdKernels{                                                                                  \
          ::sgl_fa3::portable::kernel_entry<ELEMENT, HEAD_DIM, HEAD_DIM_V,                                    \
                                            ::sgl_fa3::portable::PrefillTile<HEAD_DIM, HEAD_DIM_V>>(),        \
          ::sgl_fa3::portable::kernel_entry<ELEMENT, HEAD_DIM, HEAD_DIM_V,                                    \
                                            ::sgl_fa3::portable::ShortQueryTile<HEAD_DIM, HEAD_DIM_V>>(),     \
          ::sgl_fa3::portable::kernel_entry<ELEMENT, HEAD_DIM, HEAD_DIM_V,                                    \
                                            ::sgl_fa3::portable::DecodeTile<HEAD_DIM, HEAD_DIM_V>>()}};

}  // namespace sgl_fa3::portable
