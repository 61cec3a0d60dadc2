// Launch of the portable forward kernel for one (element type, head dim) instantiation.
#pragma once

#include "../registry.h"
#include "fwd_kernel.cuh"

namespace sgl_fa3::portable {

template <typename Element, int kHeadDim>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream) {
  using Traits = FwdTraits<Element, kHeadDim>;
  auto* kernel = &fwd_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  if constexpr (kSmem > 48 * 1024) {
    // Opt in to more than the default 48 KB of dynamic shared memory.
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.num_heads,
                  params.batch);
  if (grid.x == 0 || grid.z == 0) return cudaSuccess;
  kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

template <typename Element>
constexpr DType dtype_of() {
  return std::is_same_v<Element, __half> ? DType::kFloat16 : DType::kBFloat16;
}

// Registers run_fwd<Element, kHeadDim> under its key when the library loads.
#define SGL_FA3_REGISTER_PORTABLE_FWD(ELEMENT, HEAD_DIM)                                      \
  static const ::sgl_fa3::FwdRegistration sgl_fa3_portable_fwd_registration{                 \
      ::sgl_fa3::KernelKey{::sgl_fa3::Family::kPortable,                                      \
                           ::sgl_fa3::portable::dtype_of<ELEMENT>(), HEAD_DIM, HEAD_DIM},     \
      &::sgl_fa3::portable::run_fwd<ELEMENT, HEAD_DIM>};

}  // namespace sgl_fa3::portable
