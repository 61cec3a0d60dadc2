// Dynamic persistent tile scheduler of the Hopper family.
//
// One CTA per SM. CTA i starts with tile i; every further tile comes from a global counter
// (gridDim + atomicAdd), so CTAs that drew short tiles draw more: the work balances itself
// whatever the mask. Tile t is m_block m_blocks - 1 - t % m_blocks of the (head, batch row) pair
// t / m_blocks: the tiles of one pair run together and share its K/V in L2, and within a pair the
// longest (causal) tiles come first. Varlen tiles past a sequence's end are skipped by every role
// alike (TileWork::has_rows).
#pragma once

#include <cstdint>

namespace sgl_fa3::sm90 {

struct TileScheduler {
  int m_blocks, heads, batch;
  int* counter;  // zeroed before the launch

  __host__ __device__ int64_t num_tiles() const { return int64_t(m_blocks) * heads * batch; }
  __device__ void coords(int64_t t, int& m_block, int& head, int& b) const {
    m_block = m_blocks - 1 - int(t % m_blocks);
    const int64_t pair = t / m_blocks;
    head = int(pair % heads);
    b = int(pair / heads);
  }
  __device__ int64_t next(int grid) const { return grid + int64_t(atomicAdd(counter, 1)); }
};

}  // namespace sgl_fa3::sm90
