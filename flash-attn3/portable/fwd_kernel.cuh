// Portable forward kernel (mma.sync + cp.async; sm80 and newer).
//
// One CTA = one tile of kBlockM query rows x one head (or, with pack_gqa, the heads of one kv
// group folded into the rows) x one batch row x one KV split. Warps form a kRowWarps x
// kColWarps x kKeyWarps grid: a warp owns kMSlabs 16-row slabs, a kDV / kColWarps slice of the
// output columns (column warps of the same rows recompute the same S) and a kBlockN / kKeyWarps
// slice of every key block (key warps keep their own softmax statistics, merged at the end).
//   Q (and qv) tile  smem (kBlockM, kD)       -> A fragments (registers or re-read per block)
//   per key block n:
//     S = Q K_n^T (+ Qv V_n^T)                (kBlockM, kBlockN) fp32 in registers
//     softcap, mask, online softmax (running max m and sum l per row)
//     O += P V_n                              P re-packed from the S registers
//   epilogue: each warp's (m, l, O) -> smem, merged over key warps, normalised, then
//   O / l and LSE = m + log(l) -> global with 16-byte stores (sinks folded in), or per-split
//   fp32 partials; with split counters, the last split CTA of the tile merges them into O / LSE.
// K/V blocks stream through a ring of kStages shared-memory stages (cp.async groups): while
// block n is computed, blocks n + 1 .. n + kStages - 1 are in flight.
#pragma once

#include <cuda_runtime.h>

#include "../lazy_rescale.cuh"
#include "../mask.h"
#include "../overlap.cuh"
#include "../params.h"
#include "../seqinfo.cuh"
#include "primitives.cuh"

namespace sgl_fa3::portable {

// Shared-memory layout of a tile of rows of kCols 16-bit elements, addressed in 16-byte chunks.
// Swizzled rows (a multiple of 128 bytes) are stored unpadded with chunk c of row r at chunk
// (c & ~7) | ((c ^ r) & 7): the eight rows an ldmatrix phase reads (consecutive rows, same
// chunk) fall in eight different bank groups, and each 128-byte segment of a row stays one
// aligned segment, so a warp's cp.async of whole rows writes whole segments. (Rows padded by 16
// bytes split those segments: the L1 then sent ~2.3 sectors per L2 request and fetched 56% more
// L2 sectors than the tile holds, which cost decode ~5% of DRAM bandwidth on an H100.) The
// swizzle costs an XOR per ldmatrix fragment (fragment()) and per cp.async, so tiles may keep
// padded rows (the tile table chooses); other row lengths (d 96) are always padded by 16 bytes.
template <int kCols_, bool kSwizzle>
struct RowTile {
  static constexpr int kCols = kCols_;
  static constexpr bool kSwizzled = kSwizzle && kCols % 64 == 0;
  static constexpr int kRow = kSwizzled ? kCols : kCols + 8;  // elements between rows
  // Element offset of (row, col); col is a multiple of 8 (one 16-byte chunk). Callers may
  // offset the tile base by a multiple of 8 rows: the swizzle depends on row % 8 only.
  __device__ __forceinline__ static int offset(int row, int col) {
    if constexpr (kSwizzled) {
      const int chunk = col / 8;
      return row * kRow + ((chunk & ~7) | ((chunk ^ row) & 7)) * 8;
    } else {
      return row * kRow + col;
    }
  }
  // ldmatrix addressing (byte addresses in the shared window; 16-bit elements). A lane reads
  // rows r0 + dr and chunks c0 + dc of the tile, with its (r0, c0) fixed for the whole loop and
  // (dr, dc) constants of the unrolled fragment loops: dr a multiple of 8 (the swizzle repeats
  // every 8 rows) and dc's low three bits disjoint from c0's (c0 + dc = c0 ^ dc there). Then the
  // swizzled chunk of (r0 + dr, c0 + dc) is that of (r0, c0) XOR dc's low bits, so the lane's
  // address of (r0, c0) is computed once (lane_offset, added to a tile base aligned to 128
  // bytes) and each fragment costs one XOR with an immediate and an immediate offset
  // (fragment). offset() per fragment cost ~5 integer instructions: about 200 of a d128 key
  // block's 1350 (H100 ncu, bf16 d128 4k, where FA2 runs 1230).
  // lane_offset(r, c) is 2 * offset(r, 8 c), written out: computed through offset(), the same
  // value reallocated the registers of the whole d64 and d128 tiles.
  __device__ __forceinline__ static uint32_t lane_offset(int r0, int c0) {
    if constexpr (kSwizzled) {
      return uint32_t(r0 * kRow * 2 + (c0 & ~7) * 16 + ((c0 ^ r0) & 7) * 16);
    } else {
      return uint32_t((r0 * kRow + c0 * 8) * 2);
    }
  }
  __device__ __forceinline__ static uint32_t fragment(uint32_t lane_addr, int dr, int dc) {
    if constexpr (kSwizzled) {
      return (lane_addr ^ uint32_t((dc & 7) * 16)) + uint32_t(dr * kRow * 2 + (dc & ~7) * 16);
    } else {
      return lane_addr + uint32_t((dr * kRow + dc * 8) * 2);
    }
  }
};

template <typename Element_, int kD_, int kDV_, int kBlockM_, int kBlockN_, int kRowWarps_,
          int kColWarps_, int kKeyWarps_, bool kQInRegs_, int kStages_, bool kSwizzle_, bool kMergeSplits_,
          bool kLazyRescale_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kD = kD_, kDV = kDV_;
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_;
  static constexpr int kRowWarps = kRowWarps_, kColWarps = kColWarps_, kKeyWarps = kKeyWarps_;
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr int kStages = kStages_;
  // With split counters, the last split CTA of a tile merges the tile's partials (no combine grid).
  static constexpr bool kMergeSplits = kMergeSplits_;
  // Online softmax whose running max moves only by more than a slack (see the key-block loop).
  static constexpr bool kLazyRescale = kLazyRescale_;
  static constexpr int kNWarps = kRowWarps * kColWarps * kKeyWarps;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kMSlabs = kBlockM / (16 * kRowWarps);  // 16-row slabs per warp
  static constexpr int kDVPerWarp = kDV / kColWarps;
  static constexpr int kKeysPerWarp = kBlockN / kKeyWarps;
  // Absorbed MLA (qv) only exists for d <= 64 with dv >= 256; only those tiles reserve smem.
  static constexpr bool kHasQvSmem = kD <= 64 && kDV >= 256;
  using TileQ = RowTile<kD, kSwizzle_>;   // Q, K: (rows, kD)
  using TileV = RowTile<kDV, kSwizzle_>;  // V, Qv: (rows, kDV)
  static constexpr int kRowQ = TileQ::kRow, kRowV = TileV::kRow;
  static constexpr int kSmemQ = kBlockM * kRowQ;
  static constexpr int kSmemQv = kHasQvSmem ? kBlockM * kRowV : 0;
  static constexpr int kSmemK = kBlockN * kRowQ;
  static constexpr int kSmemV = kBlockN * kRowV;
  static constexpr int kSmemStage = kSmemK + kSmemV;  // one K/V block
  // Paged KV: element offsets of each key row of the next blocks, one buffer per stage,
  // (kStages, 2 = K / V, kBlockN) int64.
  static constexpr int kSmemRowOffsets = kStages * 2 * kBlockN * int(sizeof(int64_t));
  // Visible-key bounds (lo, hi) of each tile row, (kBlockM, 2) int: computed once per tile and
  // read by the masked key blocks.
  static constexpr int kSmemRowBounds = kBlockM * 2 * int(sizeof(int));
  static constexpr int kBytes = int(sizeof(Element));  // per element of the tiles above
  static constexpr int kSmemMain = (kSmemQ + kSmemQv + kStages * kSmemStage) * kBytes;
  // Epilogue, reusing the main-loop smem: fp32 O of each key warp (rows padded by 8 floats so
  // the fragment stores of 8 rows spread over the banks), per-row max and sum, then each row's
  // output offset.
  static constexpr int kRowO = kDV + 8;
  static constexpr int kSmemEpilogue =
      kKeyWarps * kBlockM * (kRowO + 2) * int(sizeof(float)) + kBlockM * int(sizeof(int64_t));
  static constexpr int kSmemBytes =
      (kSmemMain > kSmemEpilogue ? kSmemMain : kSmemEpilogue) + kSmemRowBounds + kSmemRowOffsets;

  static_assert(kMSlabs * 16 * kRowWarps == kBlockM, "row warps must tile kBlockM in 16-row slabs");
  static_assert(kD % 16 == 0 && kDV % 16 == 0, "head dims must be multiples of the mma k (16)");
  static_assert(kDVPerWarp % 16 == 0, "each column warp owns whole pairs of n8 output tiles");
  static_assert(kKeysPerWarp % 16 == 0, "each key warp owns whole k16 steps of the key block");
  static_assert(kKeysPerWarp % 8 == 0 && (kBlockM / kRowWarps) % 8 == 0,
                "warp tiles start at multiples of 8 rows, where the smem swizzle repeats");
  static_assert(kColWarps == 1 || kKeyWarps == 1, "split the output columns or the keys, not both");
  static_assert(kNThreads >= kBlockN, "one thread fetches each key row's paged offsets");
  static_assert(kStages >= 2, "the K/V ring needs a stage in flight besides the one computed on");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");
  // RowTile::fragment: swizzled tiles start at multiples of 128 bytes, and a column warp's first
  // chunk leaves the swizzled low three chunk bits to the lane.
  static_assert(!TileV::kSwizzled || (kSmemQ + kSmemQv + kSmemK) * kBytes % 128 == 0, "V stage base alignment");
  static_assert(!TileV::kSwizzled || kSmemQ * kBytes % 128 == 0, "Qv base alignment");
  static_assert(!TileQ::kSwizzled || (kSmemQ + kSmemQv) * kBytes % 128 == 0, "K stage base alignment");
  static_assert(kSmemStage * kBytes % 128 == 0 || !(TileQ::kSwizzled || TileV::kSwizzled), "stage alignment");
  static_assert(!TileV::kSwizzled || kColWarps == 1 || (kDVPerWarp / 8) % 8 == 0, "column warp chunk alignment");
};

// Tile row r -> (query position, head). Without pack_gqa every row has the CTA's head; with it,
// row r is query r / group of head kv_head * group + r % group (monotone query positions keep
// the mask bounds non-decreasing in r).
// (Rows and group sizes are non-negative: unsigned division, about half the code of signed.)
struct RowMap {
  int group, head0;
  bool packed;
  __device__ int query(int r) const { return packed ? int(unsigned(r) / unsigned(group)) : r; }
  __device__ int head(int r) const { return packed ? head0 + int(unsigned(r) % unsigned(group)) : head0; }
};

// Where the key rows of this CTA's kv head live. Unpaged rows are `row_stride` apart from the
// batch row's first key; paged row j sits in page page_table[j / page_size].
struct KVLayout {
  const int* pages;  // page-table row of this batch row, or nullptr
  // Shift and mask for power-of-two page sizes rather than two runtime divisions per row (H100,
  // bf16 d128 decode, pages of 1 / 16: +0-0.7%).
  PageSplit split;
  int64_t k_batch_stride, k_row_stride, v_batch_stride, v_row_stride;
  // The page holding key row j: a page-table load, issued well before row_offsets needs it.
  __device__ int page_of(int j) const { return pages[split.page(j)]; }
  // Element offsets of key row j, which sits in `page`, in K and V (from the tensor base + head
  // offset).
  __device__ void row_offsets(int page, int j, int64_t& k_off, int64_t& v_off) const {
    const int64_t slot = split.row(j);
    k_off = int64_t(page) * k_batch_stride + slot * k_row_stride;
    v_off = int64_t(page) * v_batch_stride + slot * v_row_stride;
  }
};

// Row sources of load_tile: src(r) is the global address of tile row r, and
// row_cursor(src, r, step) walks rows r, r + step, ... (get() the address, next() a step on),
// so that a source with a cheap step avoids computing each row's address from scratch.
template <typename RowAddr>
struct RowCursor {  // any callable: one call per row
  const RowAddr& src;
  int row, step;
  __device__ auto get() const { return src(row); }
  __device__ void next() { row += step; }
};
template <typename RowAddr>
__device__ __forceinline__ RowCursor<RowAddr> row_cursor(const RowAddr& src, int row, int step) {
  return {src, row, step};
}

// Rows `stride` elements apart from `base` (unpaged K / V). Its cursor is one pointer stepped
// from row to row: `base + row * stride` per row would be hoisted out of the key-block loop as
// loop-invariant 64-bit products, registers the large-head-dim tiles do not have.
template <typename Element>
struct StridedRows {
  const Element* base;
  int64_t stride;
  __device__ const Element* operator()(int r) const { return base + int64_t(r) * stride; }
};
template <typename Element>
struct StridedCursor {
  const Element* ptr;
  int64_t step;
  __device__ const Element* get() const { return ptr; }
  __device__ void next() { ptr += step; }
};
template <typename Element>
__device__ __forceinline__ StridedCursor<Element> row_cursor(const StridedRows<Element>& src, int row, int step) {
  return {src(row), step * src.stride};
}

// Rows of the Q (or Qv) tile: tile row r is (query position, head) = rows.query(r), rows.head(r)
// of a tensor with the given strides (from the problem's first query). Its cursor carries the
// (query, head) pair from row to row: with pack_gqa a division by the group size per row took
// 11 of the d64 tile's 39 KB of code before the key-block loop.
template <typename Element>
struct QueryRows {
  const Element* base;
  int64_t row_stride, head_stride;
  RowMap rows;
  int row0;  // tile row 0
  __device__ const Element* operator()(int r) const {
    return base + int64_t(rows.query(row0 + r)) * row_stride + int64_t(rows.head(row0 + r)) * head_stride;
  }
};
template <typename Element>
struct QueryCursor {
  const Element* base;
  int64_t row_stride, head_stride;
  int query, head, group;  // head within the group (0 without pack_gqa)
  int step_q, step_h;      // a step of rows in queries and heads
  __device__ const Element* get() const {
    return base + int64_t(query) * row_stride + int64_t(head) * head_stride;
  }
  __device__ void next() {
    query += step_q, head += step_h;
    if (head >= group) head -= group, ++query;
  }
};
// The first row and the step through the row map itself (without pack_gqa the head offsets stay
// 0, below any group size).
template <typename Element>
__device__ __forceinline__ QueryCursor<Element> row_cursor(const QueryRows<Element>& src, int row, int step) {
  const RowMap& m = src.rows;
  const int r = src.row0 + row;
  return {src.base + int64_t(m.head0) * src.head_stride, src.row_stride, src.head_stride,
          m.query(r), m.head(r) - m.head0, m.group, m.query(step), m.head(step) - m.head0};
}

// Rows per pass of load_tile: the largest divisor of kRows whose rows' 16-byte chunks the CTA's
// threads cover (0 if one row has more chunks than there are threads).
constexpr int rows_per_pass(int threads, int rows, int chunks_per_row) {
  int r = threads / chunks_per_row;
  while (r > 0 && rows % r != 0) --r;
  return r;
}

// Copies rows [0, rows_valid) of a (kRows, Tile::kCols) tile into shared memory laid out as
// Tile; rows past the end are zero-filled so no stale or NaN data reaches the MMA.
// `src(row)` is the global address of a row; callers guarantee rows_valid >= 1 (row 0 stands in
// as the unread source of padding rows). A pass covers kRowStep whole rows: each of the first
// kRowStep * kChunksPerRow threads keeps one column and walks rows kRowStep apart. Where the
// row's chunks do not divide the threads (d 96: 12 per row), the remaining threads sit out:
// the same number of copies per warp as spreading every chunk over all threads, without the
// per-chunk division, whose hoisted smem offsets the d96 prefill tile spilled in its loop.
template <int kNThreads, int kRows, typename Tile, typename Element, typename RowAddr>
__device__ __forceinline__ void load_tile(Element* smem, const RowAddr& src, int rows_valid) {
  constexpr int kCols = Tile::kCols;
  constexpr int kChunksPerRow = kCols * int(sizeof(Element)) / 16;
  constexpr int kRowStep = rows_per_pass(kNThreads, kRows, kChunksPerRow);
  const Element* fallback = src(0);
  if constexpr (kRowStep > 0) {
    constexpr int kIters = kRows / kRowStep;
    if (kRowStep * kChunksPerRow < kNThreads && int(threadIdx.x) >= kRowStep * kChunksPerRow) return;
    const int row0 = threadIdx.x / kChunksPerRow, col = (threadIdx.x % kChunksPerRow) * 8;
    auto cursor = row_cursor(src, row0, kRowStep);
    // Unpaged K / V: a whole block (all but a sequence's last) skips the row test. Other
    // sources keep one path: a second copy of every load (Q, paged rows) grew the d64 tile by
    // 530 instructions, and its short causal tiles wait on instruction fetch.
    if constexpr (std::is_same_v<RowAddr, StridedRows<Element>>) {
      if (rows_valid >= kRows) {
#pragma unroll
        for (int it = 0; it < kIters; ++it) {
          cp_async_16(smem + Tile::offset(row0 + it * kRowStep, col), cursor.get() + col, true);
          cursor.next();
        }
        return;
      }
    }
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowStep;
      const bool valid = row < rows_valid;
      cp_async_16(smem + Tile::offset(row, col), (valid ? cursor.get() : fallback) + col, valid);
      cursor.next();
    }
  } else {
    constexpr int kChunks = kRows * kChunksPerRow;
    constexpr int kIters = (kChunks + kNThreads - 1) / kNThreads;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int chunk = threadIdx.x + it * kNThreads;
      if (kChunks % kNThreads != 0 && chunk >= kChunks) break;
      const int row = chunk / kChunksPerRow;
      const int col = (chunk % kChunksPerRow) * 8;
      const bool valid = row < rows_valid;
      cp_async_16(smem + Tile::offset(row, col), (valid ? src(row) : fallback) + col, valid);
    }
  }
}

// A operand lanes of mma m16n8k16 (ldmatrix x4 over a 16 x 16 block): row lane % 16, chunk
// lane / 16, from the warp's first row.
template <typename Tile>
__device__ __forceinline__ uint32_t a_lane_offset(int row0, int lane) {
  return Tile::lane_offset(row0 + lane % 16, lane / 16);
}
// B operand lanes from rows of keys (ldmatrix x4 over two n8 tiles x k16): row lane % 8, + 8 for
// the second tile, chunk (lane / 8) % 2.
template <typename Tile>
__device__ __forceinline__ uint32_t b_lane_offset(int key0, int lane) {
  return Tile::lane_offset(key0 + lane % 8 + (lane / 16) * 8, (lane / 8) % 2);
}
// B operand lanes from V's rows of keys, transposed (ldmatrix x4.trans over k16 keys x two n8
// column tiles): row lane % 8, + 8 for the second k half, chunk lane / 16 past the first column.
template <typename Tile>
__device__ __forceinline__ uint32_t bt_lane_offset(int key0, int col0, int lane) {
  return Tile::lane_offset(key0 + lane % 8 + ((lane / 8) % 2) * 8, col0 / 8 + lane / 16);
}

// acc[s][n] += A_s B^T over kK: A from a_lane (the lane's a_lane_offset into this warp's slabs),
// B from b_lane (its b_lane_offset into this warp's keys), both laid out as Tile (kK =
// Tile::kCols). With kARegs the A fragments come from registers instead: a_regs is (kMSlabs,
// kK / 16, 4) flattened.
template <typename Traits, typename Tile, bool kARegs>
__device__ __forceinline__ void gemm_scores(float (&acc)[Traits::kMSlabs][Traits::kKeysPerWarp / 8][4],
                                            uint32_t a_lane, uint32_t b_lane, const uint32_t* a_regs) {
  using Element = typename Traits::Element;
  constexpr int kK = Tile::kCols;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[Traits::kMSlabs][4];
#pragma unroll
    for (int s = 0; s < Traits::kMSlabs; ++s) {
      if constexpr (kARegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[s][e] = a_regs[(s * (kK / 16) + kk) * 4 + e];
      } else {
        ldmatrix_x4(a[s], Tile::fragment(a_lane, s * 16, kk * 2));
      }
    }
#pragma unroll
    for (int nt = 0; nt < Traits::kKeysPerWarp / 8; nt += 2) {
      // Matrices: (keys nt*8.., k lo), (keys nt*8.., k hi), (keys nt*8+8.., k lo), (.., k hi).
      uint32_t b[4];
      ldmatrix_x4(b, Tile::fragment(b_lane, nt * 8, kk * 2));
#pragma unroll
      for (int s = 0; s < Traits::kMSlabs; ++s) {
        mma_16816<Element>(acc[s][nt], a[s], b[0], b[1]);
        mma_16816<Element>(acc[s][nt + 1], a[s], b[2], b[3]);
      }
    }
  }
}

// Split merge in the grid, for tiles with Traits::kMergeSplits: after a split CTA wrote its
// partials for tile rows [row0, row0 + rows_here), it arrives on the tile's counter; the last
// split to arrive merges the tile's splits while they are still in L2, where a combine grid would
// first wait for the whole forward to drain. The counter wraps to zero on that last arrival, ready
// for the next call. Returns whether this CTA was the last.
__device__ __forceinline__ bool last_split_to_arrive(unsigned* counter, int num_splits) {
  // One thread arrives for the CTA: the barrier orders every thread's partial stores before the
  // arrival, an acquire-release increment at GPU scope (a cumulative release of what the barrier
  // ordered; for the last arrival, an acquire of the other splits' partials).
  __syncthreads();
  bool last = false;
  if (threadIdx.x == 0) {
    unsigned arrived;
    asm volatile("atom.acq_rel.gpu.global.inc.u32 %0, [%1], %2;"
                 : "=r"(arrived)
                 : "l"(counter), "r"(unsigned(num_splits - 1))
                 : "memory");
    last = arrived == unsigned(num_splits - 1);
  }
  return __syncthreads_or(last);
}

// The merge: each thread takes 8 output columns of a row and folds the splits in index order into
// a running (max, sum, output) in registers, kMergeUnroll splits' loads in flight at a time; the
// sink enters as one more logit. The order depends only on num_splits, so results are bitwise
// repeatable and independent of the other rows. Partials come from L2 (other SMs wrote them).
template <typename Traits>
__device__ __forceinline__ void merge_tile_splits(const FwdParams& params, int64_t lse_offset, int64_t o_offset,
                                                  const RowMap& rows, int row0, int rows_here) {
  using Element = typename Traits::Element;
  constexpr int kDV = Traits::kDV, kCols = 8, kChunks = kDV / kCols;
  constexpr int kMergeUnroll = 8;
  const int splits = params.num_splits;
  const int64_t lse_split_stride = params.lse_rows, o_split_stride = params.lse_rows * kDV;
  for (int idx = threadIdx.x; idx < rows_here * kChunks; idx += Traits::kNThreads) {
    const int row = idx / kChunks, col = idx % kChunks * kCols;
    const int query = rows.query(row0 + row), head = rows.head(row0 + row);
    const int64_t lse_index = lse_offset + int64_t(head) * params.lse_head_stride + query;
    const float* lse_s = params.lse_partial + lse_index;
    const float* o_s = params.o_partial + lse_index * kDV + col;
    float m = params.sinks ? params.sinks[head] : -INFINITY;  // running max, natural-log units
    float sum = m == -INFINITY ? 0.f : 1.f;                   // the sink's exp(sink - m)
    float acc[kCols] = {};
    for (int s0 = 0; s0 < splits; s0 += kMergeUnroll) {
      float lse[kMergeUnroll];
      float4 lo[kMergeUnroll], hi[kMergeUnroll];
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) {
        if (s0 + u < splits) {
          lse[u] = __ldcg(lse_s + (s0 + u) * lse_split_stride);
          lo[u] = __ldcg(reinterpret_cast<const float4*>(o_s + (s0 + u) * o_split_stride));
          hi[u] = __ldcg(reinterpret_cast<const float4*>(o_s + (s0 + u) * o_split_stride + 4));
        }
      }
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u) {
        if (s0 + u >= splits || lse[u] == -INFINITY) continue;  // a split that saw no key
        if (lse[u] > m) {
          const float rescale = expf(m - lse[u]);  // 0 while m is -inf
          sum *= rescale;
#pragma unroll
          for (int c = 0; c < kCols; ++c) acc[c] *= rescale;
          m = lse[u];
        }
        const float w = expf(lse[u] - m);
        sum += w;
        const float o[kCols] = {lo[u].x, lo[u].y, lo[u].z, lo[u].w, hi[u].x, hi[u].y, hi[u].z, hi[u].w};
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[c] += w * o[c];
      }
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    Element* out = static_cast<Element*>(params.o) + o_offset + int64_t(query) * params.o_row_stride +
                   int64_t(head) * params.o_head_stride + col;
    *reinterpret_cast<uint4*>(out) =
        make_uint4(ElementTraits<Element>::pack(acc[0] * inv, acc[1] * inv),
                   ElementTraits<Element>::pack(acc[2] * inv, acc[3] * inv),
                   ElementTraits<Element>::pack(acc[4] * inv, acc[5] * inv),
                   ElementTraits<Element>::pack(acc[6] * inv, acc[7] * inv));
    if (col == 0) params.lse[lse_index] = sum > 0.f ? m + logf(sum) : -INFINITY;
  }
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fwd_kernel(const __grid_constant__ FwdParams params) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kD = Traits::kD, kDV = Traits::kDV, kMSlabs = Traits::kMSlabs;
  constexpr int kNTilesS = Traits::kKeysPerWarp / 8;   // n8 tiles of S per slab
  constexpr int kNTilesO = Traits::kDVPerWarp / 8;     // n8 tiles of O per slab
  constexpr int kNThreads = Traits::kNThreads;
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2 = 0.6931471805599453f;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* sQ = reinterpret_cast<Element*>(smem_raw);
  Element* sQv = sQ + Traits::kSmemQ;
  Element* sKV = sQv + Traits::kSmemQv;  // kStages x (K block, V block)
  // Past whichever of main loop / epilogue is larger: (kBlockM, 2) row bounds, then
  // (kStages, 2, kBlockN) paged row offsets.
  int64_t* sRowOffsets =
      reinterpret_cast<int64_t*>(smem_raw + Traits::kSmemBytes - Traits::kSmemRowOffsets);
  int2* sRowBounds = reinterpret_cast<int2*>(reinterpret_cast<unsigned char*>(sRowOffsets) - Traits::kSmemRowBounds);

  const int num_m_blocks = (gridDim.x + params.num_splits - 1) / params.num_splits;
  // Row tiles in reverse: the grid starts with the last rows of each (head, batch), which see
  // the most keys under a causal mask, so the short tiles are the ones left for the last wave.
  const int m_block = num_m_blocks - 1 - int(blockIdx.x) % num_m_blocks, split = blockIdx.x / num_m_blocks;
  const int batch = blockIdx.z;
  const int group = params.num_heads / params.num_heads_k;
  const int kv_head = params.pack_gqa ? int(blockIdx.y) : int(blockIdx.y) / group;
  const int head_y = blockIdx.y;
  const RowMap rows{group, params.pack_gqa ? head_y * group : head_y, params.pack_gqa};
  const int rows_per_query = params.pack_gqa ? group : 1;

  // Launched as a programmatic dependent (params.pdl): everything above overlapped the previous
  // grid's tail; from here on this grid reads memory that grid may have written (q, the cache).
  wait_for_previous_grids();
  const SeqInfo seq(params, batch);
  const int tile_rows = seq.rows_q * rows_per_query;  // rows of this problem in tile space
  const int used_rows = seq.seqlen_q * rows_per_query;
  const int row0 = m_block * kBlockM;
  if (row0 >= tile_rows) return;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_warp = warp % Traits::kRowWarps;
  const int col_warp = (warp / Traits::kRowWarps) % Traits::kColWarps;
  const int key_warp = warp / (Traits::kRowWarps * Traits::kColWarps);
  const int warp_key0 = key_warp * Traits::kKeysPerWarp;  // this warp's keys within a block
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = row_warp * 16 * kMSlabs;  // first tile row of this warp

  const MaskPolicy mask{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right,
                        params.attention_chunk};
  // Tile rows [row0, last_row] are written; [row0, last_used] attend (none if last_used < row0).
  const int last_row = min(row0 + kBlockM, tile_rows) - 1;
  const int last_used = min(last_row, used_rows - 1);
  const bool any_used = last_used >= row0;
  const KeyBlocks blocks = mask.key_blocks(rows.query(row0), rows.query(max(last_used, row0)), any_used,
                                          last_used == last_row, kBlockN);
  int n_block_min = blocks.n_block_min, n_block_max = blocks.n_block_max;
  const bool partial = params.o_partial != nullptr;  // split-KV: write this split's partials
  if (partial) {
    n_block_min = max(n_block_min, split * params.n_blocks_per_split);
    n_block_max = min(n_block_max, (split + 1) * params.n_blocks_per_split);
  }
  const bool has_keys = n_block_min < n_block_max;
  const bool has_qv = Traits::kHasQvSmem && params.qv != nullptr;

  const Element* gK = static_cast<const Element*>(params.k) + kv_head * params.k_head_stride;
  const Element* gV = static_cast<const Element*>(params.v) + kv_head * params.v_head_stride;
  const KVLayout kv{params.page_table ? params.page_table + batch * params.page_table_batch_stride : nullptr,
                    PageSplit(params.page_size), params.k_batch_stride, params.k_row_stride,
                    params.v_batch_stride, params.v_row_stride};
  const bool paged = kv.pages != nullptr;
  // Pages of a multiple of kBlockN keys hold each key block whole: its rows are then strided
  // from the block's first row, as unpaged rows are, and only that row's offsets are computed
  // (by thread 0) and read (H100, bf16 d128 decode, pages of 64: +0.3-0.9%).
  const bool block_in_page = paged && params.page_size % kBlockN == 0;
  const int offset_threads = block_in_page ? 1 : kBlockN;  // threads that compute row offsets
  if (!paged) {  // unpaged rows: one base per batch row (paged k/v never have a start offset)
    gK += seq.b_kv * params.k_batch_stride + int64_t(seq.k_start) * params.k_row_stride;
    gV += seq.b_kv * params.v_batch_stride + int64_t(seq.k_start) * params.v_row_stride;
  }
  // Block n_block -> ring stage `stage`: K (kBlockN, kD) then V (kBlockN, kDV). Paged row offsets
  // come from the stage's smem buffer, filled one or more iterations earlier so that the
  // dependent page-table loads (and the divisions by the page size) stay off the issue path.
  auto load_block = [&](int n_block, int stage) {
    const int key0 = n_block * kBlockN;
    Element* sK = sKV + stage * Traits::kSmemStage;
    const int rows_valid = seq.seqlen_k - key0;
    const int64_t* offs = sRowOffsets + stage * 2 * kBlockN;
    if (paged && !block_in_page) {
      load_tile<kNThreads, kBlockN, typename Traits::TileQ>(sK, [&](int r) { return gK + offs[r]; }, rows_valid);
      load_tile<kNThreads, kBlockN, typename Traits::TileV>(sK + Traits::kSmemK, [&](int r) { return gV + offs[kBlockN + r]; },
                                               rows_valid);
    } else {
      const StridedRows<Element> k_rows{gK + (paged ? offs[0] : int64_t(key0) * params.k_row_stride), params.k_row_stride};
      const StridedRows<Element> v_rows{gV + (paged ? offs[kBlockN] : int64_t(key0) * params.v_row_stride),
                                        params.v_row_stride};
      load_tile<kNThreads, kBlockN, typename Traits::TileQ>(sK, k_rows, rows_valid);
      load_tile<kNThreads, kBlockN, typename Traits::TileV>(sK + Traits::kSmemK, v_rows, rows_valid);
    }
  };
  // Paged: thread r < offset_threads owns key row r of every block. The page of its row in block n
  // (0 past the keys), and the row's offsets from that page into the buffer of `stage` (rows
  // past the end: 0, unread).
  auto row_page = [&](int n_block) {
    const int j = n_block * kBlockN + int(threadIdx.x);
    return n_block < n_block_max && j < seq.seqlen_k ? kv.page_of(j) : 0;
  };
  auto store_row_offsets = [&](int n_block, int stage, int page) {
    const int j = n_block * kBlockN + int(threadIdx.x);
    int64_t k_off = 0, v_off = 0;
    if (j < seq.seqlen_k) kv.row_offsets(page, j, k_off, v_off);
    sRowOffsets[stage * 2 * kBlockN + threadIdx.x] = k_off;
    sRowOffsets[stage * 2 * kBlockN + kBlockN + threadIdx.x] = v_off;
  };
  int next_page = 0;  // paged: the page of this thread's row in the block whose offsets go next

  // (kMSlabs, n8 tiles, 4) accumulators.
  float acc_o[kMSlabs][kNTilesO][4];
#pragma unroll
  for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
    for (int i = 0; i < kNTilesO; ++i) acc_o[s][i][0] = acc_o[s][i][1] = acc_o[s][i][2] = acc_o[s][i][3] = 0.f;
  float row_max[kMSlabs][2], row_sum[kMSlabs][2];
#pragma unroll
  for (int s = 0; s < kMSlabs; ++s) row_max[s][0] = row_max[s][1] = -INFINITY, row_sum[s][0] = row_sum[s][1] = 0.f;

  // Scores are turned into log2 units with one FMA: exp(s - m) = exp2(s * c - m * c).
  const bool use_softcap = params.softcap > 0.f;
  const float score_to_log2 = use_softcap ? kLog2e : params.softmax_scale * kLog2e;
  const float softcap_in = use_softcap ? params.softmax_scale / params.softcap : 0.f;

  // ldmatrix lane addresses (RowTile::fragment): Q and Qv as A operands; K (B of Q K^T) and V
  // (B of Qv V^T, and transposed for P V) as offsets into a K/V stage.
  const uint32_t q_lane = smem_addr(sQ) + a_lane_offset<typename Traits::TileQ>(warp_row0, lane);
  const uint32_t qv_lane = smem_addr(sQv) + a_lane_offset<typename Traits::TileV>(warp_row0, lane);
  const uint32_t k_lane = b_lane_offset<typename Traits::TileQ>(warp_key0, lane);
  constexpr uint32_t kVOffset = Traits::kSmemK * Traits::kBytes;  // V past K in a stage
  const uint32_t v_lane = kVOffset + b_lane_offset<typename Traits::TileV>(warp_key0, lane);
  const uint32_t vt_lane =
      kVOffset + bt_lane_offset<typename Traits::TileV>(warp_key0, col_warp * Traits::kDVPerWarp, lane);
  uint32_t q_frag[Traits::kQInRegs ? kMSlabs : 1][Traits::kQInRegs ? kD / 16 : 1][4];
  if (has_keys) {
    const QueryRows<Element> q_rows{static_cast<const Element*>(params.q) + seq.q_offset, params.q_row_stride,
                                    params.q_head_stride, rows, row0};
    load_tile<kNThreads, kBlockM, typename Traits::TileQ>(sQ, q_rows, last_used - row0 + 1);
    if (has_qv) {
      const QueryRows<Element> qv_rows{static_cast<const Element*>(params.qv) + seq.qv_offset, params.qv_row_stride,
                                       params.qv_head_stride, rows, row0};
      load_tile<kNThreads, kBlockM, typename Traits::TileV>(sQv, qv_rows, last_used - row0 + 1);
    }
    // Each row's visible keys (rows that do not attend see none), for the masked blocks: once
    // per tile, one thread per row, where recomputing them in every masked block took the
    // runtime divisions of chunks and packed rows into the loop body (8.5 of the d64 loop's 41
    // KB of code, whose instruction fetch stalled the short causal tiles). The first
    // iteration's barrier publishes them.
    for (int r = threadIdx.x; r < kBlockM; r += kNThreads) {
      const int tr = row0 + r;
      const bool attends = tr < used_rows;
      sRowBounds[r] = attends ? make_int2(mask.lo(rows.query(tr)), mask.hi(rows.query(tr))) : make_int2(1, 0);
    }
    // Prologue: Q joins the first group; blocks n_block_min .. + kStages - 2 go in flight.
    if (paged) {
      if (threadIdx.x < offset_threads) {
        for (int i = 0; i < Traits::kStages && n_block_min + i < n_block_max; ++i)
          store_row_offsets(n_block_min + i, i, row_page(n_block_min + i));
        next_page = row_page(n_block_min + Traits::kStages);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < Traits::kStages - 1; ++i) {
      if (n_block_min + i < n_block_max) load_block(n_block_min + i, i);
      cp_async_commit();
    }
    if constexpr (Traits::kQInRegs) {
      cp_async_wait<Traits::kStages - 2>();
      __syncthreads();
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk)
          ldmatrix_x4(q_frag[s][kk], Traits::TileQ::fragment(q_lane, s * 16, kk * 2));
    }
  }

  for (int n_block = n_block_min; n_block < n_block_max; ++n_block) {
    const int key0 = n_block * kBlockN;
    const int it = n_block - n_block_min;
    cp_async_wait<Traits::kStages - 2>();  // block n (and Q) has landed for this thread
    __syncthreads();  // ... for every thread; every warp is done with block n - 1's stage
    // Refill the stage block n - 1 used with block n + kStages - 1 (one group per iteration).
    const int n_issue = n_block + Traits::kStages - 1;
    if (n_issue < n_block_max) load_block(n_issue, (it + Traits::kStages - 1) % Traits::kStages);
    cp_async_commit();
    // Paged: the page-table entry of block n + kStages + 1 is loaded here, and the row offsets of
    // block n + kStages go to this block's buffer (block n was issued long ago) after this block's
    // math, from the entry loaded one iteration earlier. A decode block's math is shorter than
    // that load's L2 round trip: loaded in the same iteration, it stalled the loop the more often
    // the smaller the pages (H200, GQA 32/8 batch 8 x 8k over identical memory: pages of 16 keys
    // 5% and pages of 8 8% below pages of 64, same instructions and DRAM bytes). Loaded an
    // iteration ahead: pages of 1 +7-10%, of 16 +3-7% (decode d128); storing the offsets after the
    // math rather than before it: pages of 64 +1-4%, of 16 -1..+1%, of 1 -1..-2%.
    const int page = next_page;
    if (paged && threadIdx.x < offset_threads) next_page = row_page(n_block + Traits::kStages + 1);
    const uint32_t stage = smem_addr(sKV) + (it % Traits::kStages) * Traits::kSmemStage * Traits::kBytes;

    // S = Q K^T (+ Qv V^T): (kMSlabs, kNTilesS, 4) fp32.
    float acc_s[kMSlabs][kNTilesS][4];
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int i = 0; i < kNTilesS; ++i) acc_s[s][i][0] = acc_s[s][i][1] = acc_s[s][i][2] = acc_s[s][i][3] = 0.f;
    gemm_scores<Traits, typename Traits::TileQ, Traits::kQInRegs>(acc_s, q_lane, stage + k_lane, &q_frag[0][0][0]);
    if constexpr (Traits::kHasQvSmem) {
      if (has_qv) gemm_scores<Traits, typename Traits::TileV, false>(acc_s, qv_lane, stage + v_lane, nullptr);
    }
    if (use_softcap) {
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[s][i][e] = params.softcap * tanhf(acc_s[s][i][e] * softcap_in);
    }
    // Per-element test only where some row of the tile may not see the whole key block.
    if (blocks.needs_mask(n_block)) {
      // Row bounds come from smem rather than registers held across the loop: only boundary
      // blocks come this way, and the 4 * kMSlabs registers they would hold are what the
      // large-head-dim tiles lack (d128 spilled with them).
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int2 bounds = sRowBounds[warp_row0 + s * 16 + g + 8 * r];
          const int lo = bounds.x, hi = bounds.y;
#pragma unroll
          for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int key = key0 + warp_key0 + i * 8 + 2 * t + e;
              if (key < lo || key > hi) acc_s[s][i][2 * r + e] = -INFINITY;
            }
        }
    }

    // Online softmax; the four lanes of a quad share a row. exponentiate() turns a row of S into
    // P against the row's running max (m_scaled: in log2 units, 0 while the row has seen nothing,
    // so that exp2(-inf - 0) = 0) and returns its sum; rescale() moves a row's running max to the
    // block's, scaling its sum and O.
    auto exponentiate = [&](int s, int r, float m_scaled) {
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = exp2f(acc_s[s][i][2 * r + e] * score_to_log2 - m_scaled);
          acc_s[s][i][2 * r + e] = pv;
          sum += pv;
        }
      return sum;
    };
    auto scaled_max = [&](float m) { return m == -INFINITY ? 0.f : m * score_to_log2; };
    auto rescale = [&](int s, int r, float block_max) {
      const float alpha = exp2f(row_max[s][r] * score_to_log2 - scaled_max(block_max));
      row_max[s][r] = block_max;
      row_sum[s][r] *= alpha;
#pragma unroll
      for (int i = 0; i < kNTilesO; ++i) {
        acc_o[s][i][2 * r] *= alpha;
        acc_o[s][i][2 * r + 1] *= alpha;
      }
    };
    float block_max[kMSlabs][2];
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[s][r];
#pragma unroll
        for (int i = 0; i < kNTilesS; ++i) mx = fmaxf(mx, fmaxf(acc_s[s][i][2 * r], acc_s[s][i][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        block_max[s][r] = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      }
    if constexpr (Traits::kLazyRescale) {
      // The running max moves only past a slack (lazy_rescale.cuh). While no row of the warp
      // moves (past a sequence's first blocks, nearly always) the warp skips kMSlabs * kNTilesO *
      // 4 multiplies, 128 of a d128 key block's ~1080 instructions.
      bool moves = false;
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m = row_max[s][r], mx = block_max[s][r];
          moves |= mx > m && (m == -INFINITY || (mx - m) * score_to_log2 > kRescaleSlack);
        }
      if (__any_sync(0xffffffffu, moves)) {
#pragma unroll
        for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
          for (int r = 0; r < 2; ++r) rescale(s, r, block_max[s][r]);
      }
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int r = 0; r < 2; ++r) row_sum[s][r] += exponentiate(s, r, scaled_max(row_max[s][r]));
    } else {
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          rescale(s, r, block_max[s][r]);
          row_sum[s][r] += exponentiate(s, r, scaled_max(row_max[s][r]));
        }
    }

    // O += P V: P (16 x kKeysPerWarp per slab) as A fragments, one k16 step per pair of S tiles.
#pragma unroll
    for (int kk = 0; kk < Traits::kKeysPerWarp / 16; ++kk) {
      uint32_t p_frag[kMSlabs][4];
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s) {
        p_frag[s][0] = ElementTraits<Element>::pack(acc_s[s][2 * kk][0], acc_s[s][2 * kk][1]);
        p_frag[s][1] = ElementTraits<Element>::pack(acc_s[s][2 * kk][2], acc_s[s][2 * kk][3]);
        p_frag[s][2] = ElementTraits<Element>::pack(acc_s[s][2 * kk + 1][0], acc_s[s][2 * kk + 1][1]);
        p_frag[s][3] = ElementTraits<Element>::pack(acc_s[s][2 * kk + 1][2], acc_s[s][2 * kk + 1][3]);
      }
#pragma unroll
      for (int nt = 0; nt < kNTilesO; nt += 2) {
        // Matrices: (keys lo, d nt*8..), (keys hi, d nt*8..), (keys lo, d +8), (keys hi, d +8).
        uint32_t b[4];
        ldmatrix_x4_trans(b, Traits::TileV::fragment(stage + vt_lane, kk * 16, nt));
#pragma unroll
        for (int s = 0; s < kMSlabs; ++s) {
          mma_16816<Element>(acc_o[s][nt], p_frag[s], b[0], b[1]);
          mma_16816<Element>(acc_o[s][nt + 1], p_frag[s], b[2], b[3]);
        }
      }
    }
    if (paged && threadIdx.x < offset_threads && n_block + Traits::kStages < n_block_max)
      store_row_offsets(n_block + Traits::kStages, it % Traits::kStages, page);
  }

  // The grid after this one (the split-KV combine, or the next call's forward; programmatic
  // dependents on sm90) may start launching now: it waits for this grid's outputs before it
  // reads any memory.
  allow_dependent_launch();

  // Epilogue, over the main-loop smem:
  //  1. each warp parks its unnormalised O (fp32) and its rows' statistics (max in log2 units,
  //     sum) in smem;
  //  2. one thread per row merges the key warps' statistics, folds in the sink (final output
  //     only), writes the row's LSE and leaves in smem each key warp's weight for the row (its
  //     rescale times the row's normaliser) and the row's offset in the output;
  //  3. every thread sums the weighted key-warp O over 8 columns of a row at a time and writes
  //     16-byte chunks.
  // Step 2 keeps the per-row work (exp / log, the row -> (query, head) map) out of the per-chunk
  // loop: done per chunk, the epilogue of a d128 tile over 128 keys took as many issue slots as
  // its two key blocks.
  cp_async_wait<0>();
  __syncthreads();  // the main-loop smem is free
  float* sO = reinterpret_cast<float*>(smem_raw);                   // (kKeyWarps, kBlockM, kRowO)
  float* sMax = sO + Traits::kKeyWarps * kBlockM * Traits::kRowO;  // (kKeyWarps, kBlockM); step 2: weights
  float* sSum = sMax + Traits::kKeyWarps * kBlockM;                // (kKeyWarps, kBlockM)
  int64_t* sRowOut = reinterpret_cast<int64_t*>(sSum + Traits::kKeyWarps * kBlockM);  // (kBlockM)
#pragma unroll
  for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp_row0 + s * 16 + g + 8 * r;
      float sum = row_sum[s][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      float* o_row = sO + (key_warp * kBlockM + row) * Traits::kRowO + col_warp * Traits::kDVPerWarp + 2 * t;
#pragma unroll
      for (int i = 0; i < kNTilesO; ++i)
        *reinterpret_cast<float2*>(o_row + i * 8) = make_float2(acc_o[s][i][2 * r], acc_o[s][i][2 * r + 1]);
      if (t == 0 && col_warp == 0) {
        sMax[key_warp * kBlockM + row] = row_max[s][r] == -INFINITY ? -INFINITY : row_max[s][r] * score_to_log2;
        sSum[key_warp * kBlockM + row] = sum;
      }
    }
  __syncthreads();

  const int rows_here = last_row - row0 + 1;
  for (int row = threadIdx.x; row < rows_here; row += kNThreads) {
    const int query = rows.query(row0 + row), head = rows.head(row0 + row);
    float m_log2 = -INFINITY;
#pragma unroll
    for (int w = 0; w < Traits::kKeyWarps; ++w) m_log2 = fmaxf(m_log2, sMax[w * kBlockM + row]);
    float scale[Traits::kKeyWarps], sum = 0.f;
#pragma unroll
    for (int w = 0; w < Traits::kKeyWarps; ++w) {  // 0 for warps that saw no key
      scale[w] = m_log2 == -INFINITY ? 0.f : exp2f(sMax[w * kBlockM + row] - m_log2);
      sum += scale[w] * sSum[w * kBlockM + row];
    }
    // Natural-log units; the sink enters the final output only (the combine adds it to splits).
    const float m_nat = m_log2 * kLn2;
    const float sink = params.sinks && !partial ? params.sinks[head] : -INFINITY;
    const float m_all = fmaxf(m_nat, sink);
    float o_scale = 0.f, lse = -INFINITY;
    if (m_all != -INFINITY) {
      const float kept = m_nat == -INFINITY ? 0.f : expf(m_nat - m_all);
      const float total = sum * kept + expf(sink - m_all);
      o_scale = kept / total;
      lse = m_all + logf(total);
    }
#pragma unroll
    for (int w = 0; w < Traits::kKeyWarps; ++w) sMax[w * kBlockM + row] = scale[w] * o_scale;
    const int64_t lse_index = seq.lse_offset + int64_t(head) * params.lse_head_stride + query;
    if (partial) {
      params.lse_partial[int64_t(split) * params.lse_rows + lse_index] = lse;
      sRowOut[row] = (int64_t(split) * params.lse_rows + lse_index) * kDV;
    } else {
      params.lse[lse_index] = lse;
      sRowOut[row] = seq.o_offset + int64_t(query) * params.o_row_stride + int64_t(head) * params.o_head_stride;
    }
  }
  __syncthreads();

  constexpr int kCols = 8;  // columns per step: one 16-byte store of the output
  constexpr int kChunks = kDV / kCols;
  static_assert(kDV % kCols == 0, "the epilogue writes 8 output columns at a time");
  for (int idx = threadIdx.x; idx < rows_here * kChunks; idx += kNThreads) {
    const int row = idx / kChunks, col = (idx % kChunks) * kCols;
    float acc[kCols] = {};
#pragma unroll
    for (int w = 0; w < Traits::kKeyWarps; ++w) {
      const float weight = sMax[w * kBlockM + row];
      const float* o = sO + (w * kBlockM + row) * Traits::kRowO + col;
#pragma unroll
      for (int c = 0; c < kCols; c += 4) {
        const float4 v = *reinterpret_cast<const float4*>(o + c);
        acc[c] += weight * v.x, acc[c + 1] += weight * v.y, acc[c + 2] += weight * v.z, acc[c + 3] += weight * v.w;
      }
    }
    if (partial) {
      float* out = params.o_partial + sRowOut[row] + col;
#pragma unroll
      for (int c = 0; c < kCols; c += 4)
        *reinterpret_cast<float4*>(out + c) = make_float4(acc[c], acc[c + 1], acc[c + 2], acc[c + 3]);
    } else {
      Element* out = static_cast<Element*>(params.o) + sRowOut[row] + col;
      *reinterpret_cast<uint4*>(out) =
          make_uint4(ElementTraits<Element>::pack(acc[0], acc[1]), ElementTraits<Element>::pack(acc[2], acc[3]),
                     ElementTraits<Element>::pack(acc[4], acc[5]), ElementTraits<Element>::pack(acc[6], acc[7]));
    }
  }
  if constexpr (Traits::kMergeSplits) {
    if (partial && params.split_counters != nullptr) {
      const int64_t tile = (int64_t(batch) * gridDim.y + head_y) * num_m_blocks + m_block;
      if (last_split_to_arrive(params.split_counters + tile, params.num_splits))
        merge_tile_splits<Traits>(params, seq.lse_offset, seq.o_offset, rows, row0, rows_here);
    }
  }
}

}  // namespace sgl_fa3::portable
