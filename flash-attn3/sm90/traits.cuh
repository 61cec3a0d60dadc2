// Hopper (sm90a) forward family: tile shapes, shared-memory layouts and MMA types of one
// instantiation. Everything the hot loop depends on is a compile-time constant here; masks,
// softcap, sinks, varlen and GQA are runtime fields of FwdParams.
#pragma once

// The tile table uses 64 x N wgmma atoms with N not a power of two (80, 96, 112 ...): CuTe offers
// them only with CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED defined before its first include, so the
// build defines it for the whole family (build.toml) and the static_asserts below check it.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace sgl_fa3::sm90 {

using namespace cute;

// The CuTe element type of a CUDA element type.
template <typename T>
using CuteElement = std::conditional_t<std::is_same_v<T, __half>, cutlass::half_t, cutlass::bfloat16_t>;

// Widest K-major swizzle atom whose row (kCols 16-bit elements) the tile width is a multiple of.
template <typename Element, int kCols>
constexpr auto k_major_atom() {
  if constexpr (kCols % 64 == 0) return GMMA::Layout_K_SW128_Atom<Element>{};
  else if constexpr (kCols % 32 == 0) return GMMA::Layout_K_SW64_Atom<Element>{};
  else return GMMA::Layout_K_SW32_Atom<Element>{};
}

// Warp-group roles: group 0 produces (one thread issues every TMA; with paged k/v or packed GQA
// rows all 128 threads also gather K/V or Q rows with cp.async), groups 1.. consume (each owns 64
// query rows of the tile, or on the absorbed-MLA tile half of O's columns).
enum class Role : int { kProducer = 0, kConsumer = 1 };
constexpr int kProducerThreads = 128;

// A consumer group's O rows handed to the O-store warp (Epilogue::store / hand_back / serve):
// what to do with the group's staged rows, where they go, and where its LSE values go.
struct OStoreJob {
  enum Kind : int { kStore, kRelease, kExit };  // TMA-store the rows; only return the buffer; no more tiles
  int64_t lse_row0;  // index into lse of the group's first row
  int kind, rows;    // rows: how many of the 64 are written (their LSE too)
  int q_start, head, batch, row_block;  // the TMA box: rows 64 row_block.. of (q_start, head, batch)
};

// Named hardware barriers (ids after the ones CUTLASS reserves; at most 8).
enum class BarrierId : int {
  kEpilogue = 0,   // + consumer group: the group's O rows are in shared memory (or, staged in Q's bytes, read)
  kScheduler = 3,  // + consumer group: the group's turn to issue its wgmmas
  kProducer = 6,   // the producer warp group passes the next tile index around (paged k/v, packed GQA)
  kVTail = 7,      // absorbed-MLA tile, group 0: the V rows past the last key are zeroed
};

// kQv: the absorbed-MLA tile (d 64 -> dv 256 / 512 with qv): S = Q K^T + Qv V^T over 64 rows,
// which both consumer groups share; group g accumulates O's columns [g dv / 2, (g + 1) dv / 2)
// (a 64 x dv fp32 O would not fit one group's registers). Group 0 computes S and the softmax and
// hands P to group 1 through shared memory.
template <typename CudaElement, int kD_, int kDV_, int kBlockM_, int kBlockN_, int kStages_, bool kPingPong_,
          bool kQv_, bool kLazyRescale_>
struct Traits {
  using Element = CuteElement<CudaElement>;
  static constexpr int kD = kD_, kDV = kDV_;
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kStages = kStages_;
  // Consumer groups take turns issuing their wgmmas, so one group's softmax runs while the
  // tensor cores work for another.
  static constexpr bool kPingPong = kPingPong_;
  static constexpr bool kQv = kQv_;
  // The online softmax's running max moves only by more than a slack, and O is rescaled only
  // when it moved (OnlineSoftmax::update).
  static constexpr bool kLazyRescale = kLazyRescale_;
  static constexpr int kConsumerGroups = kQv ? 2 : kBlockM / 64;
  static constexpr int kDVGroup = kQv ? kDV / 2 : kDV;  // O columns of one consumer group
  static constexpr int kConsumerThreads = kConsumerGroups * 128;
  // Each consumer group bounds its own key blocks (Work::rows_slice) where the tile's rows are
  // not a whole number of key blocks: there the causal diagonal crosses a block boundary inside
  // the tile and the lower groups see fewer blocks (d64's 192 rows: 25% fewer on average at 1k
  // keys). scripts/ab_prefill.py on an H200, bf16, 512-4k: d64 causal +3-12% in two runs; d192 /
  // d256 causal +0-3%, non-causal -1-4% at 512-1k, both within what one build reads against
  // itself (+-4% at a point). Where kBlockM is a multiple of kBlockN the groups' ranges coincide
  // on the diagonal and only the bookkeeping would remain, so d96 / d128 keep one range per tile.
  static constexpr bool kGroupKeyRanges = !kQv && kBlockM % kBlockN != 0;
  static constexpr int kThreads = kConsumerThreads + 128;
  // setmaxnreg split of the 64K registers (multiples of 8; producer + consumers <= 65536 / 128).
  static constexpr int kProducerRegs = kConsumerGroups == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kConsumerGroups == 2 ? 240 : 160;

  static_assert(kQv ? kBlockM == 64 && !kPingPong && kD < kDV : kBlockM % 64 == 0 && kConsumerGroups >= 2 && kConsumerGroups <= 3,
                "two or three consumer warp groups of 64 rows, or two sharing the 64 rows of the absorbed-MLA tile");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "key block: a wgmma N (<= 256) and whole k16 steps of P.V");
  static_assert(kD % 16 == 0 && kDVGroup % 16 == 0 && kDVGroup <= 256, "head dims: whole k16 steps; a group's dv one wgmma N");
  static_assert(kStages >= 2, "a K/V stage loads while another is computed on");

  using TileQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kD>>;   // S = Q K^T: (M, N, K)
  using TilePV = Shape<Int<kBlockM>, Int<kDVGroup>, Int<kBlockN>>;  // O = P V (a group's columns): (M, N, K)
  // The groups split the rows, or (kQv) each runs its own one-group MMA on the shared rows.
  using GroupLayout = Layout<Shape<Int<kQv ? 1 : kConsumerGroups>, _1, _1>>;
  // Q and K from shared memory; P from registers, V from shared memory read transposed.
  using TiledMmaQK = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileQK>(), GroupLayout{}));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, TilePV, GMMA::Major::K, GMMA::Major::MN>(), GroupLayout{}));

  static_assert(size<1>(typename TiledMmaQK::AtomShape_MNK{}) == kBlockN,
                "S = Q K^T must be one wgmma per k16 step (define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED)");
  static_assert(size<1>(typename TiledMmaPV::AtomShape_MNK{}) == kDVGroup,
                "O = P V must be one wgmma per k16 step (define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED)");

  // kQv: group 1's P V reads P from shared memory (group 0 keeps its copy in registers).
  using TiledMmaPVss = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, TilePV, GMMA::Major::K, GMMA::Major::MN>(), GroupLayout{}));

  using SmemLayoutQ = decltype(tile_to_shape(k_major_atom<Element, kD>(), Shape<Int<kBlockM>, Int<kD>>{}));
  // kQv: Qv follows Q in the same Q buffer; (kBlockM, kDV), the A operand of Qv V^T.
  using SmemLayoutQv = decltype(tile_to_shape(k_major_atom<Element, kDV>(), Shape<Int<kBlockM>, Int<kDV>>{}));
  // kQv: P (kBlockM, kBlockN), K-major A operand of group 1's P V.
  using SmemLayoutP = decltype(tile_to_shape(k_major_atom<Element, kBlockN>(), Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutK =
      decltype(tile_to_shape(k_major_atom<Element, kD>(), Shape<Int<kBlockN>, Int<kD>, Int<kStages>>{}));
  using SmemLayoutV =
      decltype(tile_to_shape(k_major_atom<Element, kDV>(), Shape<Int<kBlockN>, Int<kDV>, Int<kStages>>{}));
  // Paged K/V by TMA: a key block arrives as boxes of whole pages' rows, each from its own page.
  // Pages whose size is a multiple of kPageBox (the largest box a key block holds) take boxes of
  // kPageBox rows; other multiples of 16 keys take boxes of kSmallPageBox rows, and the rest are
  // gathered. On an extend step (H100, bf16 d128) pages of 16 / 32 / 48 keys read 4-13% above
  // the gather in 16-row boxes, while pages of 64 read 4% below their 64-row boxes: four times
  // the copies. Rows narrower than a 128-byte swizzle atom (d96: 64-byte atoms) split a 16-row
  // box into three 1 KB copies, and pages of 16 keys read 10% below the gather (H200), so those
  // tiles keep one box size, as does the absorbed-MLA tile (up to 512 V columns a box). A box's
  // shared-memory layout is the first rows of a stage (SmemLayoutK/V tile their atoms rows
  // first, so box b of a stage is the same layout b boxes further on).
  static constexpr int kPageBox = kBlockN % 64 == 0 ? 64 : kBlockN % 32 == 0 ? 32 : 16;
  static constexpr int kSmallPageBox = kQv || kD % 64 != 0 || kDV % 64 != 0 ? kPageBox : 16;
  static_assert(kBlockN % kPageBox == 0 && kPageBox % kSmallPageBox == 0, "key blocks are whole page boxes");
  template <int kRows, class StageLayout, int kCols>
  using BoxOf = decltype(composition(take<0, 2>(StageLayout{}),
                                     make_layout(Shape<Int<kRows>, Int<kCols>>{}, make_stride(_1{}, Int<kBlockN>{}))));
  using SmemLayoutKBox = BoxOf<kPageBox, SmemLayoutK, kD>;
  using SmemLayoutVBox = BoxOf<kPageBox, SmemLayoutV, kDV>;
  using SmemLayoutKSmallBox = BoxOf<kSmallPageBox, SmemLayoutK, kD>;
  using SmemLayoutVSmallBox = BoxOf<kSmallPageBox, SmemLayoutV, kDV>;
  // The same V bytes as (kDV, kBlockN, stages): the MN-major B operand of P.V.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{}, make_ordered_layout(Shape<Int<kDV>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  // kQv: one group's half of one V stage as (kDVGroup, kBlockN). SmemLayoutV stacks its atoms
  // rows first, then column blocks, so columns [g kDVGroup, (g + 1) kDVGroup) of a stage are the
  // contiguous elements from g * kVGroupElems on, laid out as this (kBlockN, kDVGroup) tile.
  static constexpr int kVStageElems = kBlockN * kDV, kVGroupElems = kBlockN * kDVGroup;
  using SmemLayoutVtGroup = decltype(composition(
      tile_to_shape(k_major_atom<Element, kDVGroup>(), Shape<Int<kBlockN>, Int<kDVGroup>>{}),
      make_ordered_layout(Shape<Int<kDVGroup>, Int<kBlockN>>{}, Step<_2, _1>{})));
  static_assert(!kQv || std::is_same_v<decltype(k_major_atom<Element, kDV>()), decltype(k_major_atom<Element, kDVGroup>())>,
                "a group's V columns: whole swizzle atoms of the V stage");
  using SmemLayoutO = decltype(tile_to_shape(k_major_atom<Element, kDV>(), Shape<Int<kBlockM>, Int<kDV>>{}));
  // O leaves shared memory in TMA boxes of one consumer group's 64 rows by one swizzle atom's
  // width: SmemLayoutO tiles its atoms rows first, so each such box is contiguous, and box
  // (group g, column block c) starts at element (c * kConsumerGroups + g) * size of a box.
  static constexpr int kOBoxCols = decltype(size<1>(k_major_atom<Element, kDV>()))::value;
  using SmemLayoutOBox = decltype(tile_to_shape(k_major_atom<Element, kDV>(), Shape<_64, Int<kOBoxCols>>{}));
  static_assert(kDV % kOBoxCols == 0, "O columns: whole swizzle atoms");

  // O gets its own bytes when they fit, so the next tile's Q can load as soon as the last Q K^T
  // is done. Otherwise O is staged in Q's bytes: both layouts tile their atoms rows-first, so the
  // rows of one consumer group occupy the same bytes in both, and a group overwrites only the Q
  // rows it alone reads (after its last Q K^T has completed).
  static constexpr int kQElems = cosize_v<SmemLayoutQ> + (kQv ? cosize_v<SmemLayoutQv> : 0);  // one Q buffer
  static constexpr int kSmemMainBytes =
      int(sizeof(Element)) * (kQElems + cosize_v<SmemLayoutK> + cosize_v<SmemLayoutV>);
  // kQv: O leaves from registers (its 64 x dv tile would not fit next to Qv and V).
  static constexpr int kSmemOBytes = kQv ? 0 : int(sizeof(Element)) * cosize_v<SmemLayoutO>;
  static constexpr bool kOInQ = kSmemMainBytes + kSmemOBytes > 224 * 1024;
  static_assert(!kOInQ || (kDV <= kD && std::is_same_v<decltype(k_major_atom<Element, kD>()),
                                                       decltype(k_major_atom<Element, kDV>())>),
                "O must fit in Q's bytes row for row");
  // A second Q buffer, where it fits, lets the next tile's Q land while this tile still runs:
  // the consumers start the next tile without waiting for Q.
  static constexpr int kQStages =
      !kOInQ && kSmemMainBytes + kSmemOBytes + int(sizeof(Element)) * kQElems <= 224 * 1024 ? 2 : 1;
  static_assert(kQStages == 1 || !kOInQ, "O staged in Q's bytes needs the single Q buffer");
  // A tile's epilogue waits until the consumer group has issued the next tile's first Q K^T, and
  // runs while that wgmma does (the tensor cores otherwise idle through the epilogue): d96,
  // d128, d192 -> 128. H200, bf16 d128: +1-3% from 2k keys, -2% at 512 (scripts/ab_prefill.py;
  // d96 and d192 -> 128 not measured on their own). Not with O staged in Q's
  // bytes (the next Q lands there only after the epilogue), nor on the absorbed-MLA tile (its own
  // epilogue), nor with three consumer groups: at 160 registers a thread holds an in-flight S
  // beside the epilogue only with spills (d64: 16-64 bytes; measured 2-5% slower).
  static constexpr bool kDeferEpilogue = !kOInQ && !kQv && kConsumerGroups == 2;
  static_assert(kQElems * sizeof(Element) % 1024 == 0 && cosize_v<SmemLayoutQ> * sizeof(Element) % 1024 == 0,
                "each Q (and Qv) buffer keeps the 1024-byte swizzle alignment");

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using QPipeline = cutlass::PipelineTmaAsync<kQStages>;
  static constexpr uint32_t kBytesQ = kQElems * sizeof(Element);
  static constexpr uint32_t kBytesK = kBlockN * kD * sizeof(Element);
  static constexpr uint32_t kBytesV = kBlockN * kDV * sizeof(Element);

  struct SharedStorage {
    cute::array_aligned<Element, kQElems * kQStages, 1024> q;  // kQStages buffers of SmemLayoutQ (+ SmemLayoutQv)
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutV>, 1024> v;
    cute::array_aligned<Element, kOInQ || kQv ? 8 : cosize_v<SmemLayoutO>, 1024> o;  // unused when kOInQ / kQv
    // kQv: P of the current block, and each of group 0's thread's row factors (o_scale[i] of
    // thread t at [i * 128 + t]; thread t of group 1 holds the same rows).
    cute::array_aligned<Element, kQv ? cosize_v<SmemLayoutP> : 8, kQv ? 1024 : 16> p;
    float row_scale[kQv ? 2 * 128 : 1];
    typename Pipeline::SharedStorage pipe_k, pipe_v;
    typename QPipeline::SharedStorage pipe_q;
    // The next tile index, producer -> consumers: tile_full completes when it is written,
    // tile_empty when every consumer thread has read it.
    int next_tile;
    cutlass::arch::ClusterBarrier tile_full, tile_empty;
    // The V block that holds the last key lands here first when the producer zeroes its rows
    // past that key (Mainloop::produce); its stage's own full barrier completes after that.
    alignas(8) uint64_t v_tail_loaded;
    // kQv: group 0 has written P and the row factors (p_full), group 1 has read them (p_empty).
    cutlass::arch::ClusterBarrier p_full, p_empty;
    // kDeferEpilogue, with an O-store warp: group g's O rows are staged in o with their LSE in
    // o_lse and o_job (o_full[g] completes, 128 arrivals), and the store warp has read them
    // (o_empty[g], one arrival per lane).
    static constexpr int kOStoreGroups = kDeferEpilogue ? kConsumerGroups : 1;
    OStoreJob o_job[kOStoreGroups];
    float o_lse[kOStoreGroups * 64];
    cutlass::arch::ClusterBarrier o_full[kOStoreGroups], o_empty[kOStoreGroups];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in the 227 KB of shared memory of a Hopper block");
};

}  // namespace sgl_fa3::sm90
