// Forward-attention parameters: the one contract between the binding and every kernel family.
// Plain data only (no torch, no CUDA headers) so kernel translation units stay cheap to compile.
#pragma once

#include <cstdint>

namespace sgl_fa3 {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Strides are in elements. The last dimension of q/k/v/o is always contiguous.
// A tensor is either "batched" (batch_stride used, sequence offset 0) or "packed"
// (batch_stride 0, sequence b starts at row cu_seqlens[b]).
struct FwdParams {
  // q: (b, sq, h, d) or (total_q, h, d).
  const void* q;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  // k: (b_kv, sk, h_k, d) or (total_k, h_k, d);  v: same with dv.
  const void* k;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  const void* v;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  // o: like q with dv.
  void* o;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  // lse (fp32): element (b, h, i) at b * lse_batch_stride + h * lse_head_stride + cu_q[b] + i.
  float* lse;
  int64_t lse_batch_stride, lse_head_stride;

  // Per-batch int32 vectors; nullptr when absent.
  const int* cu_seqlens_q;  // (b + 1,) packed q offsets
  const int* cu_seqlens_k;  // (b + 1,) packed k offsets
  const int* seqused_q;     // (b,) query rows actually used
  const int* seqused_k;     // (b,) keys actually used (cache_seqlens)
  const int* kv_batch_idx;  // (b,) which k/v batch row serves query batch b (cache_batch_idx)
  const int* leftpad_k;     // (b,) keys skipped at the start of each k/v row (cache_leftpad)
  const float* sinks;       // (h,) one extra logit per query head, natural-log units

  int batch;
  int seqlen_q;  // dense q length, or max over the batch when packed (sizes the grid)
  int seqlen_k;  // dense k length (ignored when cu_seqlens_k / seqused_k give it)
  int num_heads, num_heads_k;
  int head_dim;

  float softmax_scale;
  float softcap;  // 0 = off

  // Visibility policy (see mask.h): -1 = unbounded side; causal is window_right = 0.
  int window_left, window_right;
  int attention_chunk;  // 0 = off

  DType dtype;
  int num_sms;
};

}  // namespace sgl_fa3
