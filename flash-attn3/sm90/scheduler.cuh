// Static persistent tile scheduler of the Hopper family.
//
// CTA i (of one per SM) takes tiles i, i + grid, i + 2 grid, ... Tile t is m_block
// m_blocks - 1 - t / (heads * batch) of head t % heads of batch row t / heads % batch: every head
// and batch row of the highest m_block first, so under a causal mask the longest tiles start first
// and the shortest fill the tail; tiles of one m_block share K/V in L2. Varlen tiles past a
// sequence's end are skipped by every role alike (TileWork::has_rows).
#pragma once

#include <cstdint>

namespace sgl_fa3::sm90 {

struct TileScheduler {
  int m_blocks, heads, batch;

  __host__ __device__ int64_t num_tiles() const { return int64_t(m_blocks) * heads * batch; }
  __device__ void coords(int64_t t, int& m_block, int& head, int& b) const {
    const int64_t per_m = int64_t(heads) * batch;
    m_block = m_blocks - 1 - int(t / per_m);
    const int hb = int(t % per_m);
    head = hb % heads;
    b = hb / heads;
  }
};

}  // namespace sgl_fa3::sm90
