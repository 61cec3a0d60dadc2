// In-place KV append with rotary embedding, and the rotated copy of q.
//
// append: one CTA per (new key j, kv head, batch row): key j goes to cache slot
//   cache_seqlens[b] + j (through the page table when paged, into cache row kv_batch_idx[b]
//   otherwise), rotated at position offset + j; the value is copied as is.
// rotate_q: one CTA per (query row i, head, batch row): q_rot = rotary(q) at offset + i when
//   rotary_q_per_row (causal / local attention), else at offset for every row.
// Rotary pairs: interleaved (2p, 2p + 1), else (p, p + rotary_dim / 2); math in fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "api.h"

namespace sgl_fa3 {
namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

// dst[0, d) = rotary(src) at `pos` (first rotary_dim dims), src copied beyond.
template <typename Element>
__device__ void rotate_row(Element* dst, const Element* src, int d, const AppendParams& p, int pos) {
  const int half = p.rotary_dim / 2;
  pos = min(max(pos, 0), p.rotary_rows - 1);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const int a = p.rotary_interleaved ? 2 * i : i;
    const int b = p.rotary_interleaved ? 2 * i + 1 : i + half;
    const float c = p.rotary_cos[int64_t(pos) * half + i], s = p.rotary_sin[int64_t(pos) * half + i];
    const float xa = to_float(src[a]), xb = to_float(src[b]);
    dst[a] = from_float<Element>(xa * c - xb * s);
    dst[b] = from_float<Element>(xa * s + xb * c);
  }
  for (int i = p.rotary_dim + threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

__device__ __forceinline__ int rotary_offset(const AppendParams& p, int b) {
  return p.rotary_seqlens ? p.rotary_seqlens[b] : p.cache_seqlens[b];
}

template <typename Element>
__global__ void __launch_bounds__(kThreads) append_kernel(const __grid_constant__ AppendParams p) {
  const int j = blockIdx.x, head = blockIdx.y, b = blockIdx.z;
  const int new_start = p.cu_seqlens_k_new ? p.cu_seqlens_k_new[b] : 0;
  const int n_new = p.cu_seqlens_k_new ? p.cu_seqlens_k_new[b + 1] - new_start : p.seqlen_k_new;
  if (j >= n_new) return;
  const int64_t src_row = p.cu_seqlens_k_new ? int64_t(new_start + j) : int64_t(j);
  const Element* k_src = static_cast<const Element*>(p.k_new) + b * (p.cu_seqlens_k_new ? 0 : p.k_new_batch_stride) +
                         src_row * p.k_new_row_stride + head * p.k_new_head_stride;
  const Element* v_src = static_cast<const Element*>(p.v_new) + b * (p.cu_seqlens_k_new ? 0 : p.v_new_batch_stride) +
                         src_row * p.v_new_row_stride + head * p.v_new_head_stride;
  const int slot = p.cache_seqlens[b] + j;
  if (slot < 0 || slot >= p.cache_slots) return;
  const int row = p.page_table ? p.page_table[b * p.page_table_batch_stride + slot / p.page_size]
                               : (p.kv_batch_idx ? p.kv_batch_idx[b] : b);
  if (row < 0 || row >= p.cache_rows) return;
  const int64_t index = p.page_table ? slot % p.page_size : slot;
  const int64_t k_dst = row * p.k_cache_batch_stride + index * p.k_cache_row_stride;
  const int64_t v_dst = row * p.v_cache_batch_stride + index * p.v_cache_row_stride;
  Element* k_out = static_cast<Element*>(p.k_cache) + k_dst + head * p.k_cache_head_stride;
  Element* v_out = static_cast<Element*>(p.v_cache) + v_dst + head * p.v_cache_head_stride;
  if (p.rotary_dim > 0) {
    rotate_row(k_out, k_src, p.head_dim, p, rotary_offset(p, b) + j);
  } else {
    for (int i = threadIdx.x; i < p.head_dim; i += blockDim.x) k_out[i] = k_src[i];
  }
  for (int i = threadIdx.x; i < p.head_dim_v; i += blockDim.x) v_out[i] = v_src[i];
}

template <typename Element>
__global__ void __launch_bounds__(kThreads) rotate_q_kernel(const __grid_constant__ AppendParams p) {
  const int i = blockIdx.x, head = blockIdx.y, b = blockIdx.z;
  const int q_start = p.cu_seqlens_q ? p.cu_seqlens_q[b] : 0;
  const int rows = p.cu_seqlens_q ? p.cu_seqlens_q[b + 1] - q_start : p.seqlen_q;
  if (i >= rows) return;
  const int64_t row = q_start + i;
  const int64_t bb = p.cu_seqlens_q ? 0 : b;
  const Element* src = static_cast<const Element*>(p.q) + bb * p.q_batch_stride + row * p.q_row_stride + head * p.q_head_stride;
  Element* dst = static_cast<Element*>(p.q_rot) + bb * p.q_rot_batch_stride + row * p.q_rot_row_stride +
                 head * p.q_rot_head_stride;
  rotate_row(dst, src, p.head_dim, p, rotary_offset(p, b) + (p.rotary_q_per_row ? i : 0));
}

template <typename Element>
cudaError_t launch(const AppendParams& p, cudaStream_t stream) {
  if (p.seqlen_k_new > 0 && p.batch > 0) {
    append_kernel<Element><<<dim3(p.seqlen_k_new, p.num_heads_k, p.batch), kThreads, 0, stream>>>(p);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  if (p.rotary_dim > 0 && p.seqlen_q > 0 && p.batch > 0) {
    rotate_q_kernel<Element><<<dim3(p.seqlen_q, p.num_heads, p.batch), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t run_append_kv(const AppendParams& params, cudaStream_t stream) {
  return params.dtype == DType::kFloat16 ? launch<__half>(params, stream) : launch<__nv_bfloat16>(params, stream);
}

}  // namespace sgl_fa3
