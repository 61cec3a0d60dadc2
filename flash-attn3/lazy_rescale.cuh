// The lazy rescale of the online softmax, one policy for both kernel families: a row's running
// max, which its exponentials are taken against, moves only when a key block's max exceeds it by
// more than a slack. O, the sum and the LSE all use the max P was taken against, so the result
// is exact; while no row of a warp moves, the warp skips rescaling O (a vote per block).
#pragma once

namespace sgl_fa3 {

// Log2 units: P = exp2(s c - m c) stays below 2^8, safe for bf16 / fp16 P and the fp32 sums. A
// row's running max m moves to the block's max mx (>= m) when the row has seen nothing yet or
// mx * c - m * c exceeds the slack. (Each family writes that test in place: called through a
// function, the same test reallocated the registers of the whole d128 portable tile.)
inline constexpr float kRescaleSlack = 8.f;

}  // namespace sgl_fa3
