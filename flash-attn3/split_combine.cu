// Split-KV combine: out = sum_s exp(lse_s - lse) * o_s with lse = log(sum_s exp(lse_s) + e^sink).
//
// One warp per output row (an "lse index"). Lanes first reduce the split LSEs to the row's
// weights (kept in shared memory), then stream the dv columns, four per lane, summing the
// splits in index order so that the result is bitwise repeatable.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "api.h"

namespace sgl_fa3 {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxSplits = 256;

template <typename Element>
__device__ __forceinline__ void store4(Element* dst, float4 v);
template <>
__device__ __forceinline__ void store4<__half>(__half* dst, float4 v) {
  const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}
template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16* dst, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

template <typename Element>
__global__ void __launch_bounds__(kWarps * 32) split_combine_kernel(const __grid_constant__ FwdParams p) {
  __shared__ float weights[kWarps][kMaxSplits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t index = int64_t(blockIdx.x) * kWarps + warp;
  if (index >= p.lse_rows) return;

  // lse index -> (head, output row address).
  int head;
  int64_t o_offset;
  if (p.cu_seqlens_q) {  // lse (h, total_q)
    head = int(index / p.lse_head_stride);
    o_offset = (index % p.lse_head_stride) * p.o_row_stride + head * p.o_head_stride;
  } else {  // lse (b, h, sq)
    const int64_t b = index / p.lse_batch_stride, rem = index % p.lse_batch_stride;
    head = int(rem / p.lse_head_stride);
    o_offset = b * p.o_batch_stride + (rem % p.lse_head_stride) * p.o_row_stride + head * p.o_head_stride;
  }

  const float sink = p.sinks ? p.sinks[head] : -INFINITY;
  float m = sink;
  for (int s = lane; s < p.num_splits; s += 32) m = fmaxf(m, p.lse_partial[s * p.lse_rows + index]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float total = 0.f;
  if (m != -INFINITY) {
    for (int s = lane; s < p.num_splits; s += 32) total += expf(p.lse_partial[s * p.lse_rows + index] - m);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) total += __shfl_xor_sync(0xffffffffu, total, o);
    total += expf(sink - m);
  }
  const float lse = m == -INFINITY ? -INFINITY : m + logf(total);
  for (int s = lane; s < p.num_splits; s += 32)
    weights[warp][s] = lse == -INFINITY ? 0.f : expf(p.lse_partial[s * p.lse_rows + index] - lse);
  __syncwarp();

  Element* out = static_cast<Element*>(p.o) + o_offset;
  for (int col = lane * 4; col < p.head_dim_v; col += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s = 0; s < p.num_splits; ++s) {
      const float w = weights[warp][s];
      const float4 v = *reinterpret_cast<const float4*>(p.o_partial + (int64_t(s) * p.lse_rows + index) * p.head_dim_v + col);
      acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
    }
    store4<Element>(out + col, acc);
  }
  if (lane == 0) p.lse[index] = lse;
}

}  // namespace

cudaError_t run_split_combine(const FwdParams& params, cudaStream_t stream) {
  if (params.num_splits > kMaxSplits || params.head_dim_v % 4 != 0) return cudaErrorInvalidValue;
  const int64_t blocks = (params.lse_rows + kWarps - 1) / kWarps;
  if (blocks == 0) return cudaSuccess;
  if (params.dtype == DType::kFloat16) {
    split_combine_kernel<__half><<<unsigned(blocks), kWarps * 32, 0, stream>>>(params);
  } else {
    split_combine_kernel<__nv_bfloat16><<<unsigned(blocks), kWarps * 32, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace sgl_fa3
