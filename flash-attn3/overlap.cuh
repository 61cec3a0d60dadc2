// Programmatic dependent launch (sm90+): a grid that may start while the grid before it on the
// stream drains. The host side configures the launch; the device side lets the next grid launch
// early and waits for the previous one's writes. Torch-free, for nvcc translation units.
#pragma once

#include <cuda_runtime.h>

namespace sgl_fa3 {

// The launch configuration of such a grid (`overlap` false gives a plain launch). Its kernel
// must call wait_for_previous_grids before it touches memory the grid before it may have written.
// config points at attribute: launch from the object itself, never from a copy.
struct OverlappedLaunch {
  cudaLaunchAttribute attribute{};
  cudaLaunchConfig_t config{};

  OverlappedLaunch(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, bool overlap) {
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = overlap ? 1 : 0;
  }
  OverlappedLaunch(const OverlappedLaunch&) = delete;
  OverlappedLaunch& operator=(const OverlappedLaunch&) = delete;
};

// No-ops before sm90. allow_dependent_launch: the grid after this one may start once every CTA of
// this grid has called it (or exited). wait_for_previous_grids: returns once the grid before this
// one has completed and its writes are visible (at once for a grid launched without overlap).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace sgl_fa3
