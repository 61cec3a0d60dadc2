// Dynamic persistent tile scheduler of the Hopper family.
//
// One CTA per SM. CTA i starts with tile i; every further tile comes from a global counter
// (gridDim + atomicAdd), so CTAs that drew short tiles draw more: the work balances itself
// whatever the mask. A "pair" is a (head, batch row) (the head is a KV head with pack_gqa).
// Tiles are drawn section by section, a section being `section` consecutive pairs (the last one
// may hold fewer); within a section the key split is outermost, then the m_block from the last
// (longest under a causal mask) to the first, then the pair:
//   t -> (section, split, m_blocks - 1 - m, pair in section)
// so the pairs of a section share their K/V in L2 while the longest tiles of every pair in it
// start first. With one pair per section this is pair-major order (the tiles of one pair run
// together; the two row tiles of a key split run side by side). Varlen tiles past a sequence's
// end are skipped by every role alike (TileWork::has_rows).
#pragma once

#include <cutlass/fast_math.h>

namespace sgl_fa3::sm90 {

struct TileScheduler {
  // Tile indices are 32-bit (the launcher refuses more tiles) and split with multiply-shift
  // divisions: every role decodes each tile on its critical path between two tiles.
  int num_tiles;
  int full_tiles;  // tiles of the full sections; the rest belong to the last, shorter one
  int full_pairs;  // pairs in the full sections
  cutlass::FastDivmod m_blocks, heads;
  cutlass::FastDivmod section_tiles;  // tiles of a full section: section x splits x m_blocks
  cutlass::FastDivmod section_pairs;  // pairs of a full section
  cutlass::FastDivmod last_pairs;     // pairs of the last section (1 when there is none)
  int* counter;                       // zeroed before the launch

  TileScheduler() = default;
  // section: pairs drawn together (launch.cuh sizes it; 1 keeps each pair's tiles together).
  TileScheduler(int m_blocks_, int splits, int heads_, int batch, int section, int* counter_)
      : m_blocks(m_blocks_), heads(heads_), counter(counter_) {
    const int pairs = heads_ * batch, tiles_per_pair = m_blocks_ * splits;
    section = section < 1 ? 1 : section > pairs ? pairs : section;
    num_tiles = pairs * tiles_per_pair;
    full_pairs = pairs / section * section;
    full_tiles = full_pairs * tiles_per_pair;
    section_tiles = cutlass::FastDivmod(section * tiles_per_pair);
    section_pairs = cutlass::FastDivmod(section);
    last_pairs = cutlass::FastDivmod(pairs > full_pairs ? pairs - full_pairs : 1);
  }

  __device__ void coords(int t, int& m_block, int& split, int& head, int& b) const {
    int pair, in_section, pair_in_section, split_m;
    if (t < full_tiles) {
      int section;
      section_tiles(section, in_section, t);
      section_pairs(split_m, pair_in_section, in_section);
      pair = section * section_pairs.divisor + pair_in_section;
    } else {
      last_pairs(split_m, pair_in_section, t - full_tiles);
      pair = full_pairs + pair_in_section;
    }
    int rest;
    m_blocks(split, rest, split_m);
    m_block = m_blocks.divisor - 1 - rest;
    heads(b, head, pair);
  }
  __device__ int next(int grid) const { return grid + atomicAdd(counter, 1); }
};

}  // namespace sgl_fa3::sm90
