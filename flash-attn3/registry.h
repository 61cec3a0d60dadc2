// Registry of compiled forward kernels. Each instantiation translation unit registers its
// launcher at load time, so a build that compiles only part of the grid (while iterating)
// still links, and the binding reports a clear error for what is missing.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

#include "params.h"

namespace sgl_fa3 {

// kPortable: mma.sync + cp.async (sm80 and newer). kSm90: TMA + wgmma, warp-specialized (sm90a).
enum class Family : int { kPortable = 0, kSm90 = 1 };

struct KernelKey {
  Family family;
  DType dtype;
  int head_dim;
  int head_dim_v;
  bool operator==(const KernelKey& o) const {
    return family == o.family && dtype == o.dtype && head_dim == o.head_dim &&
           head_dim_v == o.head_dim_v;
  }
};

using FwdLauncher = cudaError_t (*)(const FwdParams&, cudaStream_t);

// A compiled forward kernel and the tile it runs (the planner sizes grids and splits by it).
struct FwdKernel {
  FwdLauncher launch;
  int block_m, block_n;
  int smem_bytes;      // dynamic shared memory per CTA
  bool merges_splits;  // takes split counters (FwdParams::split_counters) and merges its own splits
};

// The (m block, head, batch) tiles of a portable forward grid, each run by num_splits CTAs: the
// query rows (times the GQA group when packed) in tiles of block_m rows, for every head (every KV
// head when packed). The launcher sizes its grid by it, the binding the split counters.
struct PortableTiles {
  int64_t m_blocks;
  int heads, batch;
  PortableTiles(const FwdParams& p, int block_m)
      : m_blocks((int64_t(p.seqlen_q) * (p.pack_gqa ? p.num_heads / p.num_heads_k : 1) + block_m - 1) / block_m),
        heads(p.pack_gqa ? p.num_heads_k : p.num_heads),
        batch(p.batch) {}
  int64_t count() const { return m_blocks * heads * batch; }
};

// The kernels of one key, one per planner TileKind: the prefill tile, a tile of a few dozen
// rows and a 16-row decode tile (families without the small tiles leave them empty).
struct FwdKernels {
  FwdKernel prefill, short_query, decode;
};

// Opts kKernel in to kSmemBytes of dynamic shared memory on the current device: once per
// device and kernel, not per launch (the setting never changes while the process runs).
template <auto kKernel, int kSmemBytes>
cudaError_t opt_in_shared_memory() {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static cudaError_t status[kMaxDevices];
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  std::call_once(once[device], [device] {
    status[device] = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  });
  return status[device];
}

// Returns nullptr when the kernels for `key` are not part of this build.
const FwdKernels* find_fwd(const KernelKey& key);

struct FwdRegistration {
  FwdRegistration(const KernelKey& key, const FwdKernels& kernels);
};

}  // namespace sgl_fa3
