// One CTA's work item on the Hopper path, and where its tensors live: the tile of kBlockM rows of
// one batch row (the queries of one head, or with pack_gqa the queries of every head of one KV
// group folded into the rows), its key-block range (within its key split, when the call splits)
// and the visibility bounds that let interior key blocks skip the per-element mask.
#pragma once

#include <climits>

#include "../mask.h"
#include "../params.h"
#include "../seqinfo.cuh"

namespace sgl_fa3::sm90 {

// Key blocks (mask.h), which the caller knows to be equal across the warp, passed through a
// shuffle from lane 0: that keeps them in uniform registers, off the consumers' tight register
// budget.
__device__ __forceinline__ KeyBlocks warp_uniform(const KeyBlocks& b) {
  return KeyBlocks{__shfl_sync(0xffffffffu, b.n_block_min, 0), __shfl_sync(0xffffffffu, b.n_block_max, 0),
                   __shfl_sync(0xffffffffu, b.first_unmasked, 0), __shfl_sync(0xffffffffu, b.last_unmasked, 0)};
}

// kSplitKV: the tile may be one key split of its rows (the absorbed-MLA tile); the other tiles
// compile without the clamp.
template <int kBlockM, int kBlockN, bool kSplitKV>
struct TileWork : KeyBlocks {  // the tile's key blocks
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

  TileWork() = default;
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
    int lo = 0, hi = INT_MAX;
    if (kSplitKV && p.o_partial) {  // split-KV: this split's key blocks only
      lo = split * p.n_blocks_per_split;
      hi = (split + 1) * p.n_blocks_per_split;
    }
    static_cast<KeyBlocks&>(*this) = blocks_of_rows(row0, last_row, KeyBlocks{lo, hi, 0, 0});
  }

  // The key blocks of rows [row0 + first, row0 + first + count) alone (one consumer warp group's
  // rows): on a causal diagonal or a window fewer than the tile's, and fewer of them masked.
  __device__ KeyBlocks rows_slice(int first, int count) const {
    return blocks_of_rows(row0 + first, min(last_row, row0 + first + count - 1), *this);
  }

  __device__ int query(int r) const { return group == 1 ? r : r / group; }
  __device__ int head(int r) const { return group == 1 ? head0 : head0 + r % group; }
  __device__ bool has_rows() const { return row0 <= last_row; }
  // Visible keys [lo, hi] of tile row r (empty for rows that do not attend).
  __device__ void row_bounds(int r, int& lo, int& hi) const {
    const bool attends = r <= last_used;
    const int q = query(r);
    lo = attends ? mask.lo(q) : 1;
    hi = attends ? mask.hi(q) : 0;
  }

 private:
  // Key blocks of rows [first, last] (MaskPolicy::key_blocks of their queries) within those of
  // `within`.
  __device__ KeyBlocks blocks_of_rows(int first, int last, const KeyBlocks& within) const {
    const int used = min(last, last_used);
    const bool any_used = used >= first;
    const int first_q = query(first), last_q = any_used ? query(used) : first_q;
    KeyBlocks b = mask.key_blocks(first_q, last_q, any_used, any_used && used == last, kBlockN);
    const bool has_keys = b.has_keys();
    b.n_block_min = min(max(within.n_block_min, b.n_block_min), within.n_block_max);
    b.n_block_max = has_keys ? max(min(within.n_block_max, b.n_block_max), b.n_block_min) : b.n_block_min;
    return b;
  }
};

}  // namespace sgl_fa3::sm90
