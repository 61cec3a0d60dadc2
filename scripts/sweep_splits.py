#!/usr/bin/env python3
"""Decode bandwidth by explicit split count, beside the heuristic (num_splits=0) and cuDNN.

    python scripts/sweep_splits.py --heads 32/8 --batches 8,32 --seqlens 1024,8192,32768 --page-sizes 0,16

Workload and timing as in bench_decode.py (bf16 d 128, q_len 1, GB/s of K + V + q + out over
CUDA-graph replays of back-to-back calls); every split count of a point (and cuDNN on the unpaged
cache) is read in two alternating rounds and the best kept. The evidence behind the planner's
split targets (PlanTuning in flash-attn3/planner.h).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

import bench_decode as bd
from bench_table import best_of_rounds, versions_line


def cudnn_rate(p: bd.Point, bufs: list[bd.Buffers]) -> float:
    """cuDNN on the unpaged cache; 0 where it refuses the shape (the reason goes to stderr)."""
    return bd.measure_cudnn(p, bufs) or 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--batches", default="8")
    parser.add_argument("--seqlens", default="1024,8192,32768")
    parser.add_argument("--page-sizes", default="0,16")
    parser.add_argument("--splits", default="0,1,2,3,4,6,8", help="num_splits values (0 = heuristic)")
    args = parser.parse_args()
    fa3 = bd.load_kernel()
    print(versions_line(), flush=True)
    splits = bd.parse_ints(args.splits)
    for hq, hkv in bd.parse_heads(args.heads):
        for batch in bd.parse_ints(args.batches):
            for seqlen_k in bd.parse_ints(args.seqlens):
                p = bd.Point(batch, seqlen_k, hq, hkv)
                bufs = bd.make_buffers(p)
                for page_size in bd.parse_ints(args.page_sizes):
                    rates = [partial(bd.measure_ours, fa3, p, bufs, page_size, num_splits=s) for s in splits]
                    peer = [partial(cudnn_rate, p, bufs)] if page_size == 0 else []
                    best = best_of_rounds(peer + rates, 2)
                    head = f"cudnn {best.pop(0):.0f} | " if peer else ""
                    cells = " ".join(f"{s}: {r:.0f}" for s, r in zip(splits, best))
                    print(f"{p.label()} page {page_size} | {head}{cells}", flush=True)
                del bufs
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
