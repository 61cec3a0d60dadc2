// One CTA's work item on the Hopper path, and where its tensors live: the tile of kBlockM rows of
// one batch row (the queries of one head, or with pack_gqa the queries of every head of one KV
// group folded into the rows), its key-block range (within its key split, when the call splits)
// and the visibility bounds that let interior key blocks skip the per-element mask.
#pragma once

#include "../mask.h"
#include "../params.h"
#include "../seqinfo.cuh"

namespace sgl_fa3::sm90 {

// kSplitKV: the tile may be one key split of its rows (the absorbed-MLA tile); the other tiles
// compile without the clamp.
template <int kBlockM, int kBlockN, bool kSplitKV>
struct TileWork {
  SeqInfo seq;
  MaskPolicy mask;
  int m_block, head_kv, batch;
  int split;  // key split (0 without split-KV)
  // Tile row r holds query query(r) of head head(r): without pack_gqa group = 1 and every row
  // has head head0; with it, group = heads per KV head and row r is query r / group of head
  // head0 + r % group (query positions stay non-decreasing in r, so the mask bounds do too).
  int group, head0;
  int row0;       // first row of the tile
  int last_row;   // last row written (rows past seqused_q are written as empty rows)
  int last_used;  // last row that attends (< row0: none)
  int n_block_min, n_block_max;
  int lo_max, hi_min;  // every attending row sees [lo_max, hi_min]

  // unit: the scheduler's head coordinate, a query head (or a KV head with pack_gqa).
  __device__ TileWork(const FwdParams& p, int m_block_, int unit, int batch_, int split_)
      : seq(p, batch_),
        mask{seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right, p.attention_chunk},
        m_block(m_block_),
        batch(batch_),
        split(split_) {
    const int heads_per_kv = p.num_heads / p.num_heads_k;
    group = p.pack_gqa ? heads_per_kv : 1;
    head_kv = p.pack_gqa ? unit : unit / heads_per_kv;
    head0 = p.pack_gqa ? unit * heads_per_kv : unit;
    row0 = m_block * kBlockM;
    last_row = min(row0 + kBlockM, seq.rows_q * group) - 1;
    last_used = min(last_row, seq.seqlen_q * group - 1);
    const bool any_used = last_used >= row0;
    const int first_q = query(row0), last_q = any_used ? query(last_used) : first_q;
    const int key_lo = any_used ? max(mask.lo(first_q), 0) : 0;
    const int key_hi = any_used ? min(mask.hi(last_q), seq.seqlen_k - 1) : -1;
    n_block_min = key_lo / kBlockN;
    n_block_max = key_hi >= key_lo ? key_hi / kBlockN + 1 : n_block_min;
    if (kSplitKV && p.o_partial) {  // split-KV: this split's key blocks only
      n_block_min = max(n_block_min, split * p.n_blocks_per_split);
      n_block_max = min(n_block_max, (split + 1) * p.n_blocks_per_split);
    }
    lo_max = any_used ? mask.lo(last_q) : 0;
    hi_min = any_used ? mask.hi(first_q) : -1;
  }

  __device__ int query(int r) const { return group == 1 ? r : r / group; }
  __device__ int head(int r) const { return group == 1 ? head0 : head0 + r % group; }
  __device__ bool has_rows() const { return row0 <= last_row; }
  __device__ bool has_keys() const { return n_block_max > n_block_min; }
  // Some attending row of the tile may not see all of key block n (or some row does not attend).
  __device__ bool block_needs_mask(int n) const {
    const int key0 = n * kBlockN;
    return !(last_used == last_row && key0 >= lo_max && key0 + kBlockN - 1 <= hi_min);
  }
  // Visible keys [lo, hi] of tile row r (empty for rows that do not attend).
  __device__ void row_bounds(int r, int& lo, int& hi) const {
    const bool attends = r <= last_used;
    const int q = query(r);
    lo = attends ? mask.lo(q) : 1;
    hi = attends ? mask.hi(q) : 0;
  }
};

}  // namespace sgl_fa3::sm90
