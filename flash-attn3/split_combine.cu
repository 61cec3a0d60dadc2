// Split-KV combine: out = sum_s exp(lse_s - lse) * o_s with lse = log(sum_s exp(lse_s) + e^sink).
//
// A CTA combines a few consecutive output rows ("lse indices"; the launcher picks how many, so that
// few-split rows share a CTA and many-split rows get the whole CTA). First one warp per row
// reduces the split LSEs to weights in shared memory. Then the threads form a (row, split lane,
// column group of 4) grid: each thread sums the splits s = lane, lane + lanes, ... of its four
// columns with several loads in flight, and the split lanes are added in lane order. The
// summation order depends only on num_splits and dv, so results are bitwise repeatable and
// independent of the other rows. Spreading a row's num_splits x dv partials over many threads
// keeps the combine at a few memory latencies instead of num_splits of them. Packed rows past
// cu_seqlens_q[batch] (a padded q, as under CUDA-graph replay) belong to no sequence: the forward
// wrote no partials for them and the combine leaves their out and lse untouched, as the forward
// does without splits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "api.h"
#include "overlap.cuh"

namespace sgl_fa3 {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDV = 512;
constexpr int kMaxRows = 8;      // rows per CTA (few splits, small dv)
constexpr int kSplitUnroll = 4;  // independent partial-output loads in flight per thread
static_assert(kMaxDV / 4 <= kThreads, "one column group of 4 per thread at the largest dv");

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

__device__ __forceinline__ float4 fma4(float w, float4 v, float4 acc) {
  return make_float4(acc.x + w * v.x, acc.y + w * v.y, acc.z + w * v.z, acc.w + w * v.w);
}

// Whether lse index `index` is a row of some sequence (the forward wrote its partials).
__device__ __forceinline__ bool row_of_a_sequence(const FwdParams& p, int64_t index) {
  return !p.cu_seqlens_q || index % p.lse_head_stride < p.cu_seqlens_q[p.batch];
}

template <typename Element>
__global__ void __launch_bounds__(kThreads) split_combine_kernel(const __grid_constant__ FwdParams p, int rows,
                                                                 int split_lanes) {
  __shared__ float weights[kMaxRows][kMaxSplits];
  __shared__ float lse_of[kMaxRows];
  __shared__ float4 lane_sums[kThreads];  // (row, split lane, column group)
  // The next call's forward (a programmatic dependent) may start launching: it waits for this
  // grid to complete before it reads memory. Launched as one itself (p.pdl): wait for the forward
  // grid's partial outputs.
  allow_dependent_launch();
  wait_for_previous_grids();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int splits = p.num_splits;
  const int64_t first = int64_t(blockIdx.x) * rows;

  // This thread's (row, split lane, column group) of the weighted sum. Its first kSplitUnroll
  // partial outputs are loaded before the weights exist, so their L2 round trip overlaps the
  // LSE reduction's.
  const int groups = p.head_dim_v / 4;
  const int per_row = groups * split_lanes;
  const int r = threadIdx.x / per_row, split_lane = threadIdx.x % per_row / groups, group = threadIdx.x % groups;
  const int64_t index = first + r;
  const bool active = r < rows && index < p.lse_rows && row_of_a_sequence(p, index);
  const float* src = p.o_partial + index * p.head_dim_v + group * 4;
  const int64_t split_stride = p.lse_rows * p.head_dim_v;
  float4 ahead[kSplitUnroll];
#pragma unroll
  for (int u = 0; u < kSplitUnroll; ++u) {
    const int s = split_lane + u * split_lanes;
    if (active && s < splits) ahead[u] = *reinterpret_cast<const float4*>(src + s * split_stride);
  }

  // Each row's weights: one warp, lanes over the splits (fixed order for a given num_splits).
  for (int row = warp; row < rows; row += kWarps) {
    const int64_t row_index = first + row;
    if (row_index >= p.lse_rows) break;
    if (!row_of_a_sequence(p, row_index)) continue;
    const int head = p.cu_seqlens_q ? int(row_index / p.lse_head_stride)
                                    : int(row_index % p.lse_batch_stride / p.lse_head_stride);
    const float sink = p.sinks ? p.sinks[head] : -INFINITY;
    float m = sink;
    for (int s = lane; s < splits; s += 32) m = fmaxf(m, p.lse_partial[s * p.lse_rows + row_index]);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float total = 0.f;
    if (m != -INFINITY) {
      for (int s = lane; s < splits; s += 32) total += expf(p.lse_partial[s * p.lse_rows + row_index] - m);
#pragma unroll
      for (int o = 16; o > 0; o /= 2) total += __shfl_xor_sync(0xffffffffu, total, o);
      total += expf(sink - m);
    }
    const float lse = m == -INFINITY ? -INFINITY : m + logf(total);
    for (int s = lane; s < splits; s += 32)
      weights[row][s] = lse == -INFINITY ? 0.f : expf(p.lse_partial[s * p.lse_rows + row_index] - lse);
    if (lane == 0) lse_of[row] = lse;
  }
  __syncthreads();

  if (active) {
    const float* w = weights[r];
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    int s = split_lane;
#pragma unroll
    for (int u = 0; u < kSplitUnroll; ++u, s += split_lanes)
      if (s < splits) acc = fma4(w[s], ahead[u], acc);
    for (; s + (kSplitUnroll - 1) * split_lanes < splits; s += kSplitUnroll * split_lanes) {
      float4 v[kSplitUnroll];
#pragma unroll
      for (int u = 0; u < kSplitUnroll; ++u)
        v[u] = *reinterpret_cast<const float4*>(src + (s + u * split_lanes) * split_stride);
#pragma unroll
      for (int u = 0; u < kSplitUnroll; ++u) acc = fma4(w[s + u * split_lanes], v[u], acc);
    }
    for (; s < splits; s += split_lanes) acc = fma4(w[s], *reinterpret_cast<const float4*>(src + s * split_stride), acc);
    lane_sums[threadIdx.x] = acc;
  }
  __syncthreads();
  if (active && split_lane == 0) {
    float4 acc = lane_sums[threadIdx.x];
    for (int l = 1; l < split_lanes; ++l) {
      const float4 v = lane_sums[threadIdx.x + l * groups];
      acc = make_float4(acc.x + v.x, acc.y + v.y, acc.z + v.z, acc.w + v.w);
    }
    int64_t o_offset;  // lse index -> output row
    if (p.cu_seqlens_q) {  // lse (h, total_q)
      const int64_t head = index / p.lse_head_stride;
      o_offset = (index % p.lse_head_stride) * p.o_row_stride + head * p.o_head_stride;
    } else {  // lse (b, h, sq)
      const int64_t b = index / p.lse_batch_stride, rem = index % p.lse_batch_stride;
      o_offset = b * p.o_batch_stride + (rem % p.lse_head_stride) * p.o_row_stride +
                 (rem / p.lse_head_stride) * p.o_head_stride;
    }
    store4<Element>(static_cast<Element*>(p.o) + o_offset + group * 4, acc);
    if (group == 0) p.lse[index] = lse_of[r];
  }
}

}  // namespace

cudaError_t run_split_combine(const FwdParams& params, cudaStream_t stream) {
  if (params.num_splits < 1 || params.num_splits > kMaxSplits || params.head_dim_v % 4 != 0 ||
      params.head_dim_v > kMaxDV)
    return cudaErrorInvalidValue;
  if (params.lse_rows == 0) return cudaSuccess;
  // As many split lanes per row as there are splits (up to the CTA), then as many rows as fit.
  const int groups = params.head_dim_v / 4;
  const int split_lanes = std::min(params.num_splits, kThreads / groups);
  const int rows = std::min(kMaxRows, kThreads / (groups * split_lanes));
  const OverlappedLaunch launch(dim3(unsigned((params.lse_rows + rows - 1) / rows)), dim3(kThreads), 0, stream,
                                params.pdl);
  return params.dtype == DType::kFloat16
             ? cudaLaunchKernelEx(&launch.config, split_combine_kernel<__half>, params, rows, split_lanes)
             : cudaLaunchKernelEx(&launch.config, split_combine_kernel<__nv_bfloat16>, params, rows, split_lanes);
}

}  // namespace sgl_fa3
