// The launch planner (flash-attn3/planner.h) is host-only and torch-free: this program reads one
// call per line of stdin and prints its plan, so that tests/test_planner.py can check the rules
// on any machine, GPU or not.
//
// in:  batch max_seqlen_q max_seqlen_k num_heads num_heads_k num_sms num_splits pack_gqa
//      deterministic paged, then (block_m block_n merges_splits) of the prefill, short-query
//      and decode tiles
// out: num_splits n_blocks_per_split pack_gqa tile use_combine split_merge
#include <iostream>

#include "planner.h"

int main() {
  sgl_fa3::PlanInputs in{};
  int deterministic = 0, paged = 0;
  sgl_fa3::TileShape* tiles[] = {&in.prefill, &in.short_query, &in.decode};
  while (std::cin >> in.batch >> in.max_seqlen_q >> in.max_seqlen_k >> in.num_heads >> in.num_heads_k >>
         in.num_sms >> in.num_splits >> in.pack_gqa >> deterministic >> paged) {
    in.deterministic = deterministic != 0;
    in.paged = paged != 0;
    for (sgl_fa3::TileShape* t : tiles) std::cin >> t->block_m >> t->block_n >> t->merges_splits;
    const sgl_fa3::Plan plan = sgl_fa3::plan_forward(in);
    std::cout << plan.num_splits << ' ' << plan.n_blocks_per_split << ' ' << plan.pack_gqa << ' '
              << int(plan.tile) << ' ' << plan.use_combine << ' ' << int(sgl_fa3::split_merge(in, plan)) << '\n';
  }
  return 0;
}
