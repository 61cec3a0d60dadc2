// Entry points shared by every kernel family (torch-free; called by the binding).
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace sgl_fa3 {

// The launch configuration of a grid that may start while the grid before it on the stream
// drains (programmatic dependent launch, sm90+; `overlap` false gives a plain launch). Such a
// kernel waits (griddepcontrol.wait) before it touches memory that grid may have written.
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

// Merges the per-split partials of a split-KV forward into params.o and params.lse,
// folding in the sinks. Deterministic: splits are summed in index order.
cudaError_t run_split_combine(const FwdParams& params, cudaStream_t stream);

// Writes the new keys/values into the cache (rotating keys when rotary is on) and, with
// rotary, writes the rotated queries to params.q_rot.
cudaError_t run_append_kv(const AppendParams& params, cudaStream_t stream);

}  // namespace sgl_fa3
