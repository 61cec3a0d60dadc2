// Entry points shared by every kernel family (torch-free; called by the binding).
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace sgl_fa3 {

// Merges the per-split partials of a split-KV forward into params.o and params.lse,
// folding in the sinks. Deterministic: splits are summed in index order.
cudaError_t run_split_combine(const FwdParams& params, cudaStream_t stream);

// Writes the new keys/values into the cache (rotating keys when rotary is on) and, with
// rotary, writes the rotated queries to params.q_rot.
cudaError_t run_append_kv(const AppendParams& params, cudaStream_t stream);

}  // namespace sgl_fa3
