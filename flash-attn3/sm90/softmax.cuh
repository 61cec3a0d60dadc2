// Online softmax on wgmma accumulator fragments, and the fragment views it needs.
//
// A thread's share of a 64 x N wgmma accumulator is ((2, 2, N/8), MMA_M, MMA_N): two adjacent
// columns, rows r and r + 8, then the N/8 column groups. The thread's rows are the same for
// S = Q K^T and O = P V (same M partition), so per-row statistics computed on S rescale O.
// The four threads of a quad share each row.
#pragma once

#include <cute/tensor.hpp>

#include "../lazy_rescale.cuh"

namespace sgl_fa3::sm90 {

using namespace cute;

// ((2, 2, N/8), MMA_M, MMA_N) -> (rows = (2, MMA_M), cols = (2, N/8, MMA_N)).
template <class Layout>
__device__ constexpr auto rowcol_layout(Layout l) {
  static_assert(decltype(rank<0>(l))::value == 3, "expects a wgmma accumulator layout");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The same registers as the A operand of a 64 x N x 16 register-sourced wgmma:
// ((2, 2, N/8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, (N/16, MMA_N)): each k16 step of A is two
// adjacent 8-column groups of the accumulator.
template <class Layout>
__device__ constexpr auto acc_to_a_layout(Layout l) {
  static_assert(decltype(rank<0>(l))::value == 3, "expects a wgmma accumulator layout");
  auto groups = logical_divide(get<0, 2>(l), Int<2>{});  // (2, N/16)
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0>(groups)), get<1>(l),
                     make_layout(get<1>(groups), get<2>(l)));
}

// Row i of an accumulator's (rows, cols) view times f[i] (rescaling or normalising O).
template <class TensorRC, int kRows>
__device__ __forceinline__ void scale_rows(TensorRC& rc, const float (&f)[kRows]) {
  static_assert(decltype(size<0>(rc))::value == kRows, "one factor per row of the view");
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < size<1>(rc); ++j) rc(i, j) *= f[i];
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Running max and sum of each of the thread's kRows rows. Scores stay in the units the MMA
// produced (or tanh units with softcap); exp(logit - m) = exp2(s * c - m * c), with
// c = score_to_log2 (softmax scale, or softcap, times log2 e). kLazy: the running max moves only
// by more than a slack (update).
template <int kRows, bool kLazy>
struct OnlineSoftmax {
  float row_max[kRows];
  float row_sum[kRows];  // this thread's columns only; summed over the quad at the end
  float score_to_log2;

  __device__ explicit OnlineSoftmax(float c) : score_to_log2(c) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) row_max[i] = -INFINITY, row_sum[i] = 0.f;
  }

  // s: (kRows, cols) scores -> probabilities in place. o_scale: the factor every row of O
  // accumulated so far must be multiplied by; returns whether O must be rescaled (false only
  // when every factor of the warp is 1). kLazy: the rows' running maxes move as
  // lazy_rescale.cuh says, so past a sequence's first blocks the warp nearly always skips the
  // rescale.
  template <class TensorS>
  __device__ __forceinline__ bool update(TensorS& s, float (&o_scale)[kRows]) {
    static_assert(decltype(size<0>(s))::value == kRows, "row count of the score view");
    float block_max[kRows];
    bool moves = false;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      float m = row_max[i];
#pragma unroll
      for (int j = 0; j < size<1>(s); ++j) m = fmaxf(m, s(i, j));
      block_max[i] = quad_max(m);
      moves |= block_max[i] > row_max[i] &&
               (row_max[i] == -INFINITY || (block_max[i] - row_max[i]) * score_to_log2 > kRescaleSlack);
    }
    const bool rescale = !kLazy || __any_sync(0xffffffffu, moves);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      // A row with nothing visible yet keeps max -inf: exp2(-inf - 0) = 0 and O stays 0.
      o_scale[i] = 1.f;
      if (rescale && block_max[i] != -INFINITY) {
        o_scale[i] = exp2f((row_max[i] - block_max[i]) * score_to_log2);
        row_max[i] = block_max[i];
      }
      const float base = row_max[i] == -INFINITY ? 0.f : row_max[i] * score_to_log2;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < size<1>(s); ++j) {
        s(i, j) = exp2f(fmaf(s(i, j), score_to_log2, -base));
        sum += s(i, j);
      }
      row_sum[i] = row_sum[i] * o_scale[i] + sum;
    }
    return rescale;
  }

  // Final per-row output scale exp(m - m') / (sum exp(m - m') + exp(sink - m')), m' = max(m, sink),
  // and LSE = m' + log(...) in natural-log units, with each row's sink (a logit, -inf when none)
  // folded in.
  __device__ __forceinline__ void finalize(const float (&sinks)[kRows], float (&o_scale)[kRows], float (&lse)[kRows]) {
    constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const float sink = sinks[i];
      const float sum = quad_sum(row_sum[i]);
      const float m_nat = row_max[i] == -INFINITY ? -INFINITY : row_max[i] * score_to_log2 * kLn2;
      const float m_all = fmaxf(m_nat, sink);
      o_scale[i] = 0.f;
      lse[i] = -INFINITY;
      if (m_all != -INFINITY) {
        const float kept = m_nat == -INFINITY ? 0.f : expf(m_nat - m_all);
        const float total = sum * kept + expf(sink - m_all);
        o_scale[i] = kept / total;
        lse[i] = m_all + logf(total);
      }
    }
  }
};

}  // namespace sgl_fa3::sm90
