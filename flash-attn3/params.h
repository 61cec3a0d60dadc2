// Forward-attention parameters: the one contract between the binding and every kernel family.
// Plain data only (no torch, no CUDA headers) so kernel translation units stay cheap to compile.
#pragma once

#include <cstdint>

namespace sgl_fa3 {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Most key splits of one call: the split-KV combine keeps one weight per split in shared memory.
inline constexpr int kMaxSplits = 256;

// Strides are in elements. The last dimension of every tensor is contiguous; every attention
// tensor's base address and its strides (of dimensions longer than 1) are 16-byte multiples, so
// 16-byte accesses and TMA descriptors can address any of them (the binding checks).
// A tensor is either "batched" (batch_stride used, sequence offset 0) or "packed"
// (batch_stride 0, sequence b starts at row cu_seqlens[b]).
struct FwdParams {
  // q: (b, sq, h, d) or (total_q, h, d).  qv (absorbed MLA, optional): like q with dv.
  const void* q;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  const void* qv;
  int64_t qv_batch_stride, qv_row_stride, qv_head_stride;
  // k: (b_kv, sk, h_k, d), (total_k, h_k, d) or paged (num_pages, page_size, h_k, d);
  // v: the same with dv.  For paged k/v the batch stride is the page stride.
  const void* k;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  const void* v;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  // o: like q with dv.
  void* o;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  // lse (fp32): element (b, h, i) at b * lse_batch_stride + h * lse_head_stride + cu_q[b] + i.
  // Every other per-row buffer (split partials) is indexed by this same "lse index".
  float* lse;
  int64_t lse_batch_stride, lse_head_stride;
  int64_t lse_rows;  // number of lse entries (b * h * sq, or h * total_q)

  // Per-batch int32 vectors; nullptr when absent.
  const int* cu_seqlens_q;      // (b + 1,) packed q offsets
  const int* cu_seqlens_k;      // (b + 1,) packed k offsets
  const int* seqused_q;         // (b,) query rows actually used
  const int* seqused_k;         // (b,) keys in the cache (cache_seqlens), before any append
  const int* kv_batch_idx;      // (b,) which k/v batch row serves query batch b (cache_batch_idx)
  const int* leftpad_k;         // (b,) keys skipped at the start of each k/v row (cache_leftpad)
  const int* cu_seqlens_k_new;  // (b + 1,) appended keys per row, packed; else seqlen_k_new each
  int seqlen_k_new;
  const float* sinks;  // (h,) one extra logit per query head, natural-log units

  // Paged KV: key j of batch row b lives in page page_table[b * page_table_batch_stride +
  // j / page_size], row j % page_size. page_size 0 = not paged.
  const int* page_table;
  int64_t page_table_batch_stride;
  int page_size;

  // Extents of the row and batch dims of the q and k/v tensors (a TMA descriptor needs them):
  // (seqlen, batch) when batched, (total rows, 1) when packed, (page_size, num_pages) when paged.
  int q_tensor_rows, q_tensor_batch, k_tensor_rows, k_tensor_batch;

  int batch;
  int seqlen_q;  // dense q length, or max over the batch when packed (sizes the grid)
  int seqlen_k;  // dense k length (ignored when cu_seqlens_k / seqused_k give it)
  int num_heads, num_heads_k;
  int head_dim, head_dim_v;

  float softmax_scale;
  float softcap;  // 0 = off

  // Visibility policy (see mask.h): -1 = unbounded side; causal is window_right = 0.
  int window_left, window_right;
  int attention_chunk;  // 0 = off

  // The query rows of one CTA are (query, head-in-group) pairs of one kv head.
  bool pack_gqa;

  // Split-KV: with o_partial set, split s of a row covers key blocks
  // [s, s + 1) * n_blocks_per_split and writes (o_partial[s, lse index, :], lse_partial[s, lse
  // index]) without sinks; the combine kernel merges them. Without, o and lse are final.
  int num_splits;
  int n_blocks_per_split;
  float* o_partial;    // (num_splits, lse_rows, dv) fp32
  float* lse_partial;  // (num_splits, lse_rows) fp32
  // Portable family with splits: one counter per (m block, head, batch) tile of the grid, zero
  // when the call starts and zero again when it ends. The last split CTA of a tile to arrive
  // merges the tile's partials into o and lse, and no combine kernel runs. nullptr: the combine
  // kernel merges.
  unsigned* split_counters;
  int64_t split_counter_slots;

  // A zeroed int32 the Hopper family's persistent grid hands out tiles with (nullptr elsewhere),
  // the device's SM count that grid is sized by, and the SMs it leaves free for other work
  // (SGLang overlaps communication kernels).
  int* tile_counter;
  int num_sms, sm_margin;
  // The binding sets it on Hopper: the portable forward and the split-KV combine launch as
  // programmatic dependents of the grid before them on the stream, so their launch overlaps that
  // grid's last CTAs instead of following their exit (each waits for that grid's writes before
  // it reads memory).
  bool pdl;

  DType dtype;
};

// In-place append of new keys/values into the cache, with optional rotary embedding;
// also produces the rotated queries when rotary is on.
struct AppendParams {
  const void* k_new;  // (b, sn, h_k, d) or (total_new, h_k, d) with cu_seqlens_k_new
  int64_t k_new_batch_stride, k_new_row_stride, k_new_head_stride;
  const void* v_new;
  int64_t v_new_batch_stride, v_new_row_stride, v_new_head_stride;
  void* k_cache;  // dense (b_cache, s, h_k, d) or paged (pages, page_size, h_k, d)
  int64_t k_cache_batch_stride, k_cache_row_stride, k_cache_head_stride;
  void* v_cache;
  int64_t v_cache_batch_stride, v_cache_row_stride, v_cache_head_stride;
  const int* cache_seqlens;  // (b,) slot of the first appended key
  const int* kv_batch_idx;
  const int* cu_seqlens_k_new;
  int seqlen_k_new;  // appended keys per row when not packed (and the grid size when packed)
  const int* page_table;
  int64_t page_table_batch_stride;
  int page_size;
  // Cache capacity: writes that would land outside it (bad cache_seqlens, page ids or
  // cache_batch_idx) are dropped instead of corrupting memory.
  int cache_rows;   // k_cache.size(0): cache rows, or pages when paged
  int cache_slots;  // slots per batch row: k_cache.size(1), or max_pages * page_size

  // Rotary (rotary_dim = 0: off). cos/sin (seqlen_ro, rotary_dim / 2), contiguous, fp32.
  const float* rotary_cos;
  const float* rotary_sin;
  int rotary_dim;
  int rotary_rows;  // positions past the table read its last row (memory safety, not semantics)
  bool rotary_interleaved;
  const int* rotary_seqlens;  // (b,) position offset; cache_seqlens when null
  bool rotary_q_per_row;      // q row i at offset + i (causal/local) or all rows at offset

  // q -> q_rot (rotated copy), only when rotary_dim > 0.
  const void* q;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  void* q_rot;
  int64_t q_rot_batch_stride, q_rot_row_stride, q_rot_head_stride;
  const int* cu_seqlens_q;
  int seqlen_q;  // dense q length or max when packed

  int batch, num_heads, num_heads_k, head_dim, head_dim_v;
  DType dtype;
};

}  // namespace sgl_fa3
