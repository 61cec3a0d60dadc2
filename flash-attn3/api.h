// Entry points shared by every kernel family (torch-free; called by the binding).
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace sgl_fa3 {

// Merges the per-split partials of a split-KV forward into params.o and params.lse,
// folding in the sinks. Deterministic: splits are summed in index order.
cudaError_t run_split_combine(const FwdParams& params, cudaStream_t stream);

// Sets *counters to `slots` zeroed split counters for a portable forward on `stream`
// (FwdParams::split_counters). Every call leaves its counters zero, so a buffer is zeroed once,
// when it is created, and then serves each later call on that stream in order:
// one buffer per (device, stream) for eager calls, and one per stream of each CUDA-graph capture,
// so that a graph's replays never share counters with work outside the graph. Buffers live for
// the process (a few KB each).
cudaError_t split_counters(int device, cudaStream_t stream, int64_t slots, unsigned** counters);

// Writes the new keys/values into the cache (rotating keys when rotary is on) and, with
// rotary, writes the rotated queries to params.q_rot.
cudaError_t run_append_kv(const AppendParams& params, cudaStream_t stream);

}  // namespace sgl_fa3
