// Portable forward kernel (mma.sync + cp.async; sm80 and newer).
//
// One CTA = one (64-row query tile, query head, batch row). Four warps each own 16 query rows
// and the full key block, so the softmax row statistics never leave a quad of lanes.
//   Q tile    smem (kBlockM, kHeadDim) -> registers once, as mma A fragments
//   per key block n (kBlockN keys):
//     S = Q K_n^T            (kBlockM, kBlockN) fp32 in registers
//     mask / softcap, online softmax (running max m, running sum l per row)
//     O += P V_n             P re-packed from the S registers, V via ldmatrix.trans
//   O / l -> global, LSE = m + log(l) (sinks folded in at the end).
// K_{n+1} is fetched while P V_n runs and V_n while Q K_n^T runs (cp.async groups).
#pragma once

#include <cuda_runtime.h>

#include "../mask.h"
#include "../params.h"
#include "primitives.cuh"

namespace sgl_fa3::portable {

template <typename Element_, int kHeadDim_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 64;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kRowsPerWarp = kBlockM / kNWarps;
  // Rows are padded by 16 bytes: consecutive rows then start 4 banks apart, so the eight row
  // addresses of one ldmatrix phase hit distinct banks.
  static constexpr int kSmemRow = kHeadDim + 8;
  static constexpr int kChunksPerRow = kHeadDim * int(sizeof(Element)) / 16;  // 16-byte chunks
  static constexpr int kSmemTileQ = kBlockM * kSmemRow;
  static constexpr int kSmemTileKV = kBlockN * kSmemRow;
  static constexpr int kSmemBytes = (kSmemTileQ + 2 * kSmemTileKV) * int(sizeof(Element));

  static_assert(kRowsPerWarp == 16, "each warp owns exactly one m16 row slab");
  static_assert(kHeadDim % 16 == 0, "head dim must be a multiple of the mma k (16)");
  static_assert(kBlockN % 16 == 0, "key block must be a multiple of the mma k (16)");
  static_assert((kBlockM * kChunksPerRow) % kNThreads == 0, "Q tile copy must divide evenly");
  static_assert((kBlockN * kChunksPerRow) % kNThreads == 0, "K/V tile copy must divide evenly");
};

// Where one (batch row, head) problem lives and how long it is.
struct SeqInfo {
  int rows_q;    // query rows this problem owns in q / out (all of them are written)
  int seqlen_q;  // rows that attend (seqused_q); rows past it see no key
  int seqlen_k;
  int64_t q_offset, k_offset, v_offset, o_offset;  // elements, head included
  int64_t lse_offset;

  __device__ SeqInfo(const FwdParams& p, int b, int h) {
    const int h_k = h / (p.num_heads / p.num_heads_k);
    const int q_start = p.cu_seqlens_q ? p.cu_seqlens_q[b] : 0;
    const int b_kv = p.kv_batch_idx ? p.kv_batch_idx[b] : b;
    int k_start = p.cu_seqlens_k ? p.cu_seqlens_k[b] : 0;
    rows_q = p.cu_seqlens_q ? p.cu_seqlens_q[b + 1] - q_start : p.seqlen_q;
    seqlen_q = p.seqused_q ? min(p.seqused_q[b], rows_q) : rows_q;
    seqlen_k = p.seqused_k   ? p.seqused_k[b]
               : p.cu_seqlens_k ? p.cu_seqlens_k[b + 1] - k_start
                                : p.seqlen_k;
    if (p.leftpad_k) {
      k_start += p.leftpad_k[b];
      seqlen_k -= p.leftpad_k[b];
    }
    seqlen_k = max(seqlen_k, 0);
    q_offset = b * p.q_batch_stride + q_start * p.q_row_stride + h * p.q_head_stride;
    o_offset = b * p.o_batch_stride + q_start * p.o_row_stride + h * p.o_head_stride;
    k_offset = b_kv * p.k_batch_stride + int64_t(k_start) * p.k_row_stride + h_k * p.k_head_stride;
    v_offset = b_kv * p.v_batch_stride + int64_t(k_start) * p.v_row_stride + h_k * p.v_head_stride;
    lse_offset = b * p.lse_batch_stride + h * p.lse_head_stride + q_start;
  }
};

// Copies `rows_valid` rows of a (kRows, kHeadDim) tile into padded shared memory; rows past the
// end are zero-filled so that no stale or NaN data can reach the tensor cores.
template <typename Traits, int kRows>
__device__ __forceinline__ void load_tile(typename Traits::Element* smem,
                                          const typename Traits::Element* gmem, int64_t row_stride,
                                          int rows_valid) {
  constexpr int kIters = kRows * Traits::kChunksPerRow / Traits::kNThreads;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int chunk = threadIdx.x + it * Traits::kNThreads;
    const int row = chunk / Traits::kChunksPerRow;
    const int col = (chunk % Traits::kChunksPerRow) * 8;
    const bool valid = row < rows_valid;
    cp_async_16(smem + row * Traits::kSmemRow + col, valid ? gmem + row * row_stride + col : gmem,
                valid);
  }
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kNThreads)
    fwd_kernel(const __grid_constant__ FwdParams params) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kD = Traits::kHeadDim;
  constexpr int kSmemRow = Traits::kSmemRow;
  constexpr int kNTilesS = kBlockN / 8;  // n8 tiles of S per warp
  constexpr int kNTilesO = kD / 8;       // n8 tiles of O per warp
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2 = 0.6931471805599453f;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  Element* sQ = reinterpret_cast<Element*>(smem_raw);
  Element* sK = sQ + Traits::kSmemTileQ;
  Element* sV = sK + Traits::kSmemTileKV;

  const int m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const SeqInfo seq(params, batch, head);
  const int row0 = m_block * kBlockM;
  if (row0 >= seq.rows_q) return;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // The two query rows (relative to the sequence) whose statistics this thread holds.
  const int my_row[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};

  const MaskPolicy mask{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right,
                        params.attention_chunk};
  // Rows [row0, last_row] are written; rows [row0, last_used] attend (none if last_used < row0).
  const int last_row = min(row0 + kBlockM, seq.rows_q) - 1;
  const int last_used = min(last_row, seq.seqlen_q - 1);
  const int key_lo = last_used < row0 ? 0 : mask.lo(row0);
  const int key_hi = last_used < row0 ? -1 : mask.hi(last_used);
  const int n_block_min = key_lo / kBlockN;
  const int n_block_max = key_hi < key_lo ? n_block_min : key_hi / kBlockN + 1;

  const Element* gQ = static_cast<const Element*>(params.q) + seq.q_offset;
  const Element* gK = static_cast<const Element*>(params.k) + seq.k_offset;
  const Element* gV = static_cast<const Element*>(params.v) + seq.v_offset;

  // (MMA_M=1 slab, MMA_N, 4) accumulators.
  float acc_o[kNTilesO][4];
#pragma unroll
  for (int i = 0; i < kNTilesO; ++i) acc_o[i][0] = acc_o[i][1] = acc_o[i][2] = acc_o[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};

  // Scores are turned into log2 units with one FMA: exp(s - m) = exp2(s * c - m * c).
  const bool use_softcap = params.softcap > 0.f;
  const float score_to_log2 = use_softcap ? kLog2e : params.softmax_scale * kLog2e;
  const float softcap_in = use_softcap ? params.softmax_scale / params.softcap : 0.f;

  if (n_block_min < n_block_max) {
    load_tile<Traits, kBlockM>(sQ, gQ + int64_t(row0) * params.q_row_stride, params.q_row_stride,
                               last_used - row0 + 1);
    load_tile<Traits, kBlockN>(sK, gK + int64_t(n_block_min) * kBlockN * params.k_row_stride,
                               params.k_row_stride, seq.seqlen_k - n_block_min * kBlockN);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }

  // Q as A fragments: (kD / 16 k-steps, 4 regs).
  uint32_t q_frag[kD / 16][4];
  if (n_block_min < n_block_max) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      ldmatrix_x4(q_frag[kk], sQ + (warp * 16 + lane % 16) * kSmemRow + kk * 16 + (lane / 16) * 8);
    }
  }

  for (int n_block = n_block_min; n_block < n_block_max; ++n_block) {
    const int key0 = n_block * kBlockN;
    cp_async_wait<0>();  // K_n has landed
    __syncthreads();     // ... for every thread, and every warp is done reading V_{n-1}
    load_tile<Traits, kBlockN>(sV, gV + int64_t(key0) * params.v_row_stride, params.v_row_stride,
                               seq.seqlen_k - key0);
    cp_async_commit();

    // S = Q K^T: (kNTilesS, 4) fp32.
    float acc_s[kNTilesS][4];
#pragma unroll
    for (int i = 0; i < kNTilesS; ++i) acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
      for (int nt = 0; nt < kNTilesS; nt += 2) {
        // Matrices: (keys nt*8.., k lo), (keys nt*8.., k hi), (keys nt*8+8.., k lo), (.., k hi).
        uint32_t b[4];
        ldmatrix_x4(b, sK + (nt * 8 + lane % 8 + (lane / 16) * 8) * kSmemRow + kk * 16 +
                           ((lane / 8) % 2) * 8);
        mma_16816<Element>(acc_s[nt], q_frag[kk], b[0], b[1]);
        mma_16816<Element>(acc_s[nt + 1], q_frag[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done reading K_n
    const bool has_next = n_block + 1 < n_block_max;
    if (has_next) {
      load_tile<Traits, kBlockN>(sK, gK + int64_t(key0 + kBlockN) * params.k_row_stride,
                                 params.k_row_stride, seq.seqlen_k - key0 - kBlockN);
      cp_async_commit();
    }

    if (use_softcap) {
#pragma unroll
      for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[i][e] = params.softcap * tanhf(acc_s[i][e] * softcap_in);
    }
    // Per-element test only where some row of the tile may not see the whole key block.
    const bool block_is_interior = last_used == last_row && key0 >= mask.lo(last_row) &&
                                   key0 + kBlockN - 1 <= mask.hi(row0);
    if (!block_is_interior) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const bool attends = my_row[r] < seq.seqlen_q;
        const int lo = attends ? mask.lo(my_row[r]) : 1, hi = attends ? mask.hi(my_row[r]) : 0;
#pragma unroll
        for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = key0 + i * 8 + 2 * t + e;
            if (key < lo || key > hi) acc_s[i][2 * r + e] = -INFINITY;
          }
      }
    }

    // Online softmax; the four lanes of a quad share a row.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int i = 0; i < kNTilesS; ++i) mx = fmaxf(mx, fmaxf(acc_s[i][2 * r], acc_s[i][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with nothing visible yet keeps max -inf; use 0 so that exp2(-inf - 0) = 0.
      const float mx_scaled = mx == -INFINITY ? 0.f : mx * score_to_log2;
      const float alpha = exp2f(row_max[r] * score_to_log2 - mx_scaled);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kNTilesS; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = exp2f(acc_s[i][2 * r + e] * score_to_log2 - mx_scaled);
          acc_s[i][2 * r + e] = pv;
          sum += pv;
        }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int i = 0; i < kNTilesO; ++i) {
        acc_o[i][2 * r] *= alpha;
        acc_o[i][2 * r + 1] *= alpha;
      }
    }

    if (has_next) {
      cp_async_wait<1>();  // V_n has landed (K_{n+1} may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // O += P V: P (16 x kBlockN) as A fragments, one k16 step per pair of S tiles.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint32_t p_frag[4] = {
          ElementTraits<Element>::pack(acc_s[2 * kk][0], acc_s[2 * kk][1]),
          ElementTraits<Element>::pack(acc_s[2 * kk][2], acc_s[2 * kk][3]),
          ElementTraits<Element>::pack(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]),
          ElementTraits<Element>::pack(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3])};
#pragma unroll
      for (int nt = 0; nt < kNTilesO; nt += 2) {
        // Matrices: (keys lo, d nt*8..), (keys hi, d nt*8..), (keys lo, d +8), (keys hi, d +8).
        uint32_t b[4];
        ldmatrix_x4_trans(b, sV + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kSmemRow +
                                 nt * 8 + (lane / 16) * 8);
        mma_16816<Element>(acc_o[nt], p_frag, b[0], b[1]);
        mma_16816<Element>(acc_o[nt + 1], p_frag, b[2], b[3]);
      }
    }
  }

  // Epilogue: normalise, fold in the sink, write O and LSE.
  Element* gO = static_cast<Element*>(params.o) + seq.o_offset;
  const float sink = params.sinks ? params.sinks[head] : -INFINITY;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    // Row max in natural-log units (scale and softcap already applied).
    const float m_nat = row_max[r] == -INFINITY ? -INFINITY : row_max[r] * score_to_log2 * kLn2;
    const float m_all = fmaxf(m_nat, sink);
    float o_scale = 0.f, lse = -INFINITY;
    if (m_all != -INFINITY) {
      const float kept = expf(m_nat - m_all);  // 0 when the row saw no key
      const float total = sum * kept + expf(sink - m_all);
      o_scale = kept / total;
      lse = m_all + logf(total);
    }
    const int row = my_row[r];
    if (row < seq.rows_q) {
      Element* out_row = gO + int64_t(row) * params.o_row_stride;
#pragma unroll
      for (int i = 0; i < kNTilesO; ++i) {
        const uint32_t packed =
            ElementTraits<Element>::pack(acc_o[i][2 * r] * o_scale, acc_o[i][2 * r + 1] * o_scale);
        *reinterpret_cast<uint32_t*>(out_row + i * 8 + 2 * t) = packed;
      }
      if (t == 0) params.lse[seq.lse_offset + row] = lse;
    }
  }
}

}  // namespace sgl_fa3::portable
