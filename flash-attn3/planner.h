// Launch plan of a forward call: GQA packing and the split-KV layout. Host-only, torch-free.
#pragma once

#include <algorithm>
#include <cstdint>

#include "params.h"

namespace sgl_fa3 {

struct TileShape {
  int block_m, block_n;
  bool merges_splits = false;  // the last split CTA of each tile folds the splits (FwdKernel::merges_splits)
};

// The forward tiles of an instantiation, from the most rows to the fewest.
enum class TileKind : int { kPrefill = 0, kShortQuery = 1, kDecode = 2 };

struct PlanInputs {
  int batch, max_seqlen_q, max_seqlen_k;  // max_seqlen_k includes appended keys
  int num_heads, num_heads_k;
  TileShape prefill;      // compute-bound tile
  TileShape short_query;  // up to a few dozen rows (speculative decoding, packed GQA groups)
  TileShape decode;       // a few rows (one query per head, GQA-packed)
  int num_sms;
  int num_splits;  // requested: 0 = heuristic, 1 = none, n = up to n
  int pack_gqa;    // requested: -1 = heuristic, 0 / 1
  bool deterministic;
  bool paged;  // k/v read through a page table
};

struct SplitLayout {
  int n_blocks_per_split, num_splits;
};

struct Plan {
  int num_splits;          // splits in the grid (1 = no split)
  int n_blocks_per_split;  // key blocks per split
  bool pack_gqa;
  TileKind tile;     // the tile that runs
  bool use_combine;  // partial outputs + combine kernel (always when deterministic)

  void set_splits(const SplitLayout& layout) {
    n_blocks_per_split = layout.n_blocks_per_split;
    num_splits = layout.num_splits;
  }
  // The splits of a precomputed plan (get_scheduler_metadata): partials whenever it has more
  // than one split, and always in deterministic mode.
  void set_precomputed_splits(const SplitLayout& layout, bool deterministic) {
    set_splits(layout);
    use_combine = deterministic || num_splits > 1;
  }
};

// Tuning table (reasons next to each value).
struct PlanTuning {
  // Split until every SM has one CTA, never more (floor of num_sms / ctas): on an H100 (bf16
  // d128, q_len 1, GQA 32/8 and MHA 32/32) one CTA per SM beats two for unpaged k/v once the
  // unsplit grid fills half the SMs (batch 16 GQA x 1k: 1 split 2306 GB/s vs 2 splits 2014;
  // batch 4 MHA x 1k: 2389 vs 2052; smaller grids: kTargetCtasPerSmFewTiles), and a grid a
  // few CTAs over the SM count leaves those SMs with two CTAs and a tail (batch 1 GQA x 32k: 16
  // splits = 128 CTAs 2370 GB/s, 17 splits = 136 CTAs 2036).
  static constexpr int kTargetCtasPerSm = 1;
  // A paged block waits on its page-table entries too, and one CTA per SM keeps too little in
  // flight: two per SM (page size 16, GQA batch 8 x 32k: 4 splits 2788 GB/s vs 2 splits 2463;
  // batch 1 x 32k: 33 splits 2261 vs 16 splits 2104).
  static constexpr int kTargetCtasPerSmPaged = 2;
  // Unpaged k/v on the decode tile, where the unsplit grid leaves at least half the SMs idle:
  // two CTAs per SM as well (H100, bf16 d128, q_len 1, unpaged, ratio to one per SM: GQA 32/8
  // batch 8 x 1k / 8k / 32k 1.032 / 1.035 / 1.008, batch 4 x 8k / 32k 1.016 / 1.019, MHA 32/32
  // batch 2 x 1k / 8k 1.031 / 1.023; the other points at batch 1-16 within -0.6..+1.7%). With
  // more CTAs than that, splitting gains less than the partials cost (batch 16 GQA x 1k, above).
  // The short-query tile likewise (q_len 8, GQA 32/8, unpaged, against one per SM: batch 1-8 x
  // 8k / 32k 1.09-1.21, x 1k 0.985-1.06, batch 16 unsplit either way; geomean 1.087 over batch
  // 1-16 x 1k-32k). Tiles that do not merge their own splits (the Hopper absorbed-MLA tile, one
  // CTA per SM, which its split layout was measured with) keep one per SM.
  static constexpr int kTargetCtasPerSmFewTiles = 2;
  // A split of fewer key blocks is all ramp (batch 1 GQA x 1k: 8 splits of 2 blocks 386 GB/s,
  // 16 splits of 1 block 383, 2 splits of 8 blocks 287).
  static constexpr int kMinBlocksPerSplit = 2;
  // Decode and short-query tiles merge their own splits (the last split CTA of a tile folds the
  // splits in order, kMergeUnroll loads in flight per thread): up to 8 splits that is one L2
  // round trip after the forward, where the combine kernel costs 3.1-3.5 us (H100, GQA 32/8 d128:
  // batch 1 x 1k +14%, batch 8 x 1k +4-7%). Past 8 splits the folds chain round trips (batch 1 x
  // 8k over pages of 16, 33 splits: -8%) and the combine kernel, which spreads splits over
  // threads, merges instead (deterministic calls excepted: they always merge in the grid).
  static constexpr int kMaxSplitsMergedInGrid = 8;
  // Deterministic mode fixes the split length (in keys) so that each row's split boundaries,
  // hence its rounding, depend only on its own length and never on the rest of the batch.
  static constexpr int kDeterministicKeysPerSplit = 2048;
};

inline int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

inline const TileShape& shape_of(const PlanInputs& in, TileKind tile) {
  return tile == TileKind::kDecode ? in.decode : tile == TileKind::kShortQuery ? in.short_query : in.prefill;
}

// n_blocks key blocks in splits of at least min_per blocks each, widened so that there are at
// most kMaxSplits; no empty trailing split.
inline SplitLayout split_layout(int64_t n_blocks, int64_t min_per) {
  int64_t per = std::max<int64_t>(min_per, 1);
  if (ceil_div(n_blocks, per) > kMaxSplits) per = ceil_div(n_blocks, kMaxSplits);
  return {int(per), ceil_div(n_blocks, per)};
}

inline Plan plan_forward(const PlanInputs& in) {
  Plan plan{};
  const int group = in.num_heads_k > 0 ? in.num_heads / in.num_heads_k : 1;
  // Packing the heads of a KV group into the rows of one tile reads each K/V block once per
  // group instead of once per query head; it pays when the queries alone leave the tile mostly
  // empty (decode and short chunks).
  plan.pack_gqa = in.pack_gqa >= 0 ? in.pack_gqa == 1 : (group > 1 && in.max_seqlen_q < in.prefill.block_m);
  const int rows = in.max_seqlen_q * (plan.pack_gqa ? group : 1);
  // The smallest tile that holds the rows: few rows are memory-bound, and a tile sized to them
  // wastes no MMA work on empty rows and streams K/V deeper (H100, GQA 32/8 d128 x 8k, 8 query
  // rows per head: the 128-row prefill tile reads 1.3 TB/s).
  plan.tile = rows <= in.decode.block_m        ? TileKind::kDecode
              : rows <= in.short_query.block_m ? TileKind::kShortQuery
                                               : TileKind::kPrefill;
  const TileShape& shape = shape_of(in, plan.tile);
  const int block_m = shape.block_m, block_n = shape.block_n;
  const int n_blocks = std::max(ceil_div(in.max_seqlen_k, block_n), 1);
  const int64_t ctas = int64_t(in.batch) * (plan.pack_gqa ? in.num_heads_k : in.num_heads) *
                       std::max(ceil_div(rows, block_m), 1);

  int splits = 1;
  if (in.deterministic && in.num_splits != 1) {
    plan.set_splits(split_layout(n_blocks, PlanTuning::kDeterministicKeysPerSplit / block_n));
    plan.use_combine = true;
    return plan;
  }
  if (in.num_splits > 1) {
    splits = std::min({in.num_splits, n_blocks, kMaxSplits});
  } else if (in.num_splits == 0) {
    const bool few_tiles = shape.merges_splits && 2 * ctas <= int64_t(in.num_sms);
    const int per_sm = in.paged    ? PlanTuning::kTargetCtasPerSmPaged
                       : few_tiles ? PlanTuning::kTargetCtasPerSmFewTiles
                                   : PlanTuning::kTargetCtasPerSm;
    const int64_t target = int64_t(per_sm) * in.num_sms;
    splits = int(std::min<int64_t>(target / ctas, n_blocks / PlanTuning::kMinBlocksPerSplit));
    splits = std::clamp(splits, 1, kMaxSplits);
  }
  plan.set_splits(split_layout(n_blocks, ceil_div(n_blocks, splits)));
  plan.use_combine = plan.num_splits > 1;
  return plan;
}

// Where a plan's split partials are merged: nowhere (no partials), inside the forward grid (the
// tile's last split CTA folds them, PlanTuning::kMaxSplitsMergedInGrid) or by the combine kernel
// after it; plan may be a precomputed one. Deterministic calls on a merging tile always merge in
// the grid: their split count follows the longest row of the batch, and a row's result must not
// change with it (the in-grid fold skips empty splits exactly; the combine kernel's lanes regroup
// the splits as their count changes).
enum class SplitMerge : int { kNone = 0, kInGrid = 1, kCombineKernel = 2 };

inline SplitMerge split_merge(const PlanInputs& in, const Plan& plan) {
  if (!plan.use_combine) return SplitMerge::kNone;
  const bool in_grid = shape_of(in, plan.tile).merges_splits &&
                       (in.deterministic || plan.num_splits <= PlanTuning::kMaxSplitsMergedInGrid);
  return in_grid ? SplitMerge::kInGrid : SplitMerge::kCombineKernel;
}

}  // namespace sgl_fa3
