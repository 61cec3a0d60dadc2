// Dynamic persistent tile scheduler of the Hopper family.
//
// One CTA per SM. CTA i starts with tile i; every further tile comes from a global counter
// (gridDim + atomicAdd), so CTAs that drew short tiles draw more: the work balances itself
// whatever the mask. Tile t is m_block m_blocks - 1 - t % m_blocks of key split
// t / m_blocks % splits of the (head, batch row) pair t / (m_blocks splits) (the head is a KV
// head with pack_gqa): the tiles of one pair run together and share its K/V in L2, and within a
// pair the longest (causal) tiles come first. Varlen tiles past
// a sequence's end are skipped by every role alike (TileWork::has_rows).
#pragma once

#include <cutlass/fast_math.h>

namespace sgl_fa3::sm90 {

struct TileScheduler {
  // Tile indices are 32-bit (the launcher refuses more tiles) and split with multiply-shift
  // divisions: every role decodes each tile on its critical path between two tiles.
  int num_tiles;
  cutlass::FastDivmod m_blocks, splits, heads;
  int* counter;  // zeroed before the launch

  TileScheduler() = default;
  TileScheduler(int m_blocks_, int splits_, int heads_, int batch, int* counter_)
      : num_tiles(m_blocks_ * splits_ * heads_ * batch),
        m_blocks(m_blocks_),
        splits(splits_),
        heads(heads_),
        counter(counter_) {}

  __device__ void coords(int t, int& m_block, int& split, int& head, int& b) const {
    int pair_split, pair, rest;
    m_blocks(pair_split, rest, t);
    m_block = m_blocks.divisor - 1 - rest;
    splits(pair, split, pair_split);
    heads(b, head, pair);
  }
  __device__ int next(int grid) const { return grid + atomicAdd(counter, 1); }
};

}  // namespace sgl_fa3::sm90
