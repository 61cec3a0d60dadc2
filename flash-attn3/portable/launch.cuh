// Launch of the portable forward kernel: the tile table and one launcher per instantiation.
#pragma once

#include "../registry.h"
#include "fwd_kernel.cuh"

namespace sgl_fa3::portable {

// Tile per (d, dv): kBlockM, kBlockN, row warps, column warps, Q fragments kept in registers.
// Reasons: with one 16-row slab per warp every K/V fragment loaded by ldmatrix feeds only two
// MMAs and the loop is bound by shared-memory bandwidth, so small head dims give each warp two
// slabs (kBlockM 128 over 4 warps). Large head dims cannot hold two slabs of O in registers and
// use 8 warps of one slab. Q stays in registers only where it fits next to O and S (d64).
// dv 512 splits the output columns over two column warps (O would need 256 registers).
template <int kD, int kDV>
struct Tile;
template <> struct Tile<64, 64>   { static constexpr int kM = 128, kN = 64, kRowWarps = 4, kColWarps = 1; static constexpr bool kQInRegs = true; };
template <> struct Tile<96, 96>   { static constexpr int kM = 128, kN = 64, kRowWarps = 4, kColWarps = 1; static constexpr bool kQInRegs = false; };
template <> struct Tile<128, 128> { static constexpr int kM = 128, kN = 32, kRowWarps = 4, kColWarps = 1; static constexpr bool kQInRegs = false; };
template <> struct Tile<192, 192> { static constexpr int kM = 128, kN = 64, kRowWarps = 8, kColWarps = 1; static constexpr bool kQInRegs = false; };
template <> struct Tile<192, 128> { static constexpr int kM = 128, kN = 64, kRowWarps = 8, kColWarps = 1; static constexpr bool kQInRegs = false; };
template <> struct Tile<256, 256> { static constexpr int kM = 128, kN = 64, kRowWarps = 8, kColWarps = 1; static constexpr bool kQInRegs = false; };
template <> struct Tile<64, 256>  { static constexpr int kM = 64, kN = 64, kRowWarps = 4, kColWarps = 2; static constexpr bool kQInRegs = false; };
template <> struct Tile<64, 512>  { static constexpr int kM = 64, kN = 32, kRowWarps = 4, kColWarps = 2; static constexpr bool kQInRegs = false; };

template <typename Element, int kD, int kDV>
using TraitsFor = FwdTraits<Element, kD, kDV, Tile<kD, kDV>::kM, Tile<kD, kDV>::kN, Tile<kD, kDV>::kRowWarps,
                            Tile<kD, kDV>::kColWarps, Tile<kD, kDV>::kQInRegs>;

template <typename Element, int kD, int kDV>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  using Traits = TraitsFor<Element, kD, kDV>;
  auto* kernel = &fwd_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  if constexpr (kSmem > 48 * 1024) {
    // Opt in to more than the default 48 KB of dynamic shared memory.
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
  }
  const int rows_per_query = params.pack_gqa ? params.num_heads / params.num_heads_k : 1;
  const int64_t m_blocks = (int64_t(params.seqlen_q) * rows_per_query + Traits::kBlockM - 1) / Traits::kBlockM;
  const dim3 grid(unsigned(m_blocks * params.num_splits), params.pack_gqa ? params.num_heads_k : params.num_heads,
                  params.batch);
  if (grid.x == 0 || grid.z == 0) return cudaSuccess;
  kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

template <typename Element>
constexpr DType dtype_of() {
  return std::is_same_v<Element, __half> ? DType::kFloat16 : DType::kBFloat16;
}

// Registers run_fwd<Element, kD, kDV> under its key when the library loads.
#define SGL_FA3_REGISTER_PORTABLE_FWD(ELEMENT, HEAD_DIM, HEAD_DIM_V)                                  \
  static const ::sgl_fa3::FwdRegistration sgl_fa3_portable_fwd_registration{                        \
      ::sgl_fa3::KernelKey{::sgl_fa3::Family::kPortable, ::sgl_fa3::portable::dtype_of<ELEMENT>(),   \
                           HEAD_DIM, HEAD_DIM_V},                                                    \
      ::sgl_fa3::FwdKernel{&::sgl_fa3::portable::run_fwd<ELEMENT, HEAD_DIM, HEAD_DIM_V>,             \
                           ::sgl_fa3::portable::Tile<HEAD_DIM, HEAD_DIM_V>::kM,                     \
                           ::sgl_fa3::portable::Tile<HEAD_DIM, HEAD_DIM_V>::kN}};

}  // namespace sgl_fa3::portable
