// Per-batch-row extents of a forward problem, shared by every kernel family.
#pragma once

#include "params.h"

namespace sgl_fa3 {

// Where one (batch row, kv split) problem lives and how long it is. Offsets exclude the head.
struct SeqInfo {
  int rows_q;    // query positions this problem owns in q / out (all of them are written)
  int seqlen_q;  // positions that attend (seqused_q); later ones see no key
  int seqlen_k;  // keys after append, minus left padding
  int k_start;   // first key's row in the k/v rows of this batch row (left padding included)
  int b_kv;      // k/v batch row (or page-table row when paged)
  int q_start;   // first query's row in packed q (0 when batched)
  int64_t q_offset, qv_offset, o_offset, lse_offset;

  SeqInfo() = default;  // fields undefined until assigned (a slot for a later tile's copy)
  __device__ SeqInfo(const FwdParams& p, int b) {
    q_start = p.cu_seqlens_q ? p.cu_seqlens_q[b] : 0;
    b_kv = p.kv_batch_idx ? p.kv_batch_idx[b] : b;
    // Paged rows start at slot 0 of their page-table row; cu_seqlens_k then only gives lengths.
    const int k_packed_start = p.cu_seqlens_k ? p.cu_seqlens_k[b] : 0;
    k_start = p.page_table ? 0 : k_packed_start;
    rows_q = p.cu_seqlens_q ? p.cu_seqlens_q[b + 1] - q_start : p.seqlen_q;
    seqlen_q = p.seqused_q ? min(p.seqused_q[b], rows_q) : rows_q;
    seqlen_k = p.seqused_k   ? p.seqused_k[b]
               : p.cu_seqlens_k ? p.cu_seqlens_k[b + 1] - k_packed_start
                                : p.seqlen_k;
    seqlen_k += p.cu_seqlens_k_new ? p.cu_seqlens_k_new[b + 1] - p.cu_seqlens_k_new[b]
                                   : p.seqlen_k_new;
    if (p.leftpad_k) {
      k_start += p.leftpad_k[b];
      seqlen_k -= p.leftpad_k[b];
    }
    seqlen_k = max(seqlen_k, 0);
    q_offset = b * p.q_batch_stride + q_start * p.q_row_stride;
    qv_offset = b * p.qv_batch_stride + q_start * p.qv_row_stride;
    o_offset = b * p.o_batch_stride + q_start * p.o_row_stride;
    lse_offset = b * p.lse_batch_stride + q_start;
  }
};

// Key j of a paged batch row (params.h): its page-table index j / size and its row j % size in
// that page, by shift and mask where the page size is a power of two (as page sizes are in
// practice) instead of runtime integer divisions in per-row address code.
struct PageSplit {
  int size;
  int shift;  // log2(size) for a power of two, else -1 (also for size 0: __ffs(0) is 0)

  __device__ explicit PageSplit(int size_) : size(size_) { shift = (size_ & (size_ - 1)) == 0 ? __ffs(size_) - 1 : -1; }
  __device__ int page(int j) const { return shift >= 0 ? j >> shift : j / size; }
  __device__ int row(int j) const { return shift >= 0 ? j & (size - 1) : j % size; }
};

}  // namespace sgl_fa3
