#!/usr/bin/env python3
"""Prefill throughput of two or more builds of this package in one process (A/B of a change).

    python scripts/ab_prefill.py BASE_BUILD NEW_BUILD [--seqlens 512,1024] [--hdims 64,128]
    python scripts/ab_prefill.py BASE_BUILD NEW_BUILD --backend portable --peer fa2
    python scripts/ab_prefill.py BASE_BUILD NEW_BUILD --varlen --hdims 64,128
    python scripts/ab_prefill.py BASE_BUILD NEW_BUILD --extend --hdims 128 --page-sizes 1,16,64

Each argument is a build folder (the `build/` of a checkout: `kernels.get_local_kernel` loads it).
Shapes as in bench_prefill.py (bf16, batch * seqlen = 16k, heads * d = 2048); each point is timed
in two alternating rounds and the best of each build is kept, so that clock drift during the run
does not favour one build. Prints TFLOP/s and the ratio to the first build, then the geometric
mean of those ratios. --backend picks the kernel family (SGL_FLASH_ATTN3_BACKEND), --peer the
SDPA backend printed beside them. --varlen times the packed workload of bench_prefill_varlen.py
(64 sequences of seeded random length 1..8k) instead, without a peer; --extend the paged extend
step of bench_extend.py (bf16, GQA 32/8 and MHA 16/16, d of --hdims) at each page size, then
unpaged.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

import bench_extend as be
import bench_prefill as bp
import bench_prefill_varlen as bv
from bench_table import best_of_rounds, versions_line


def best_of_builds(builds: list, measure: Callable[[object], float]) -> list[float]:
    """Each build's best TFLOP/s over two rounds that alternate the builds."""
    return best_of_rounds([functools.partial(measure, fa3) for fa3 in builds], 2)


def record(ratios: list[list[float]], best: list[float], label: str) -> None:
    for i, x in enumerate(best):
        ratios[i].append(x / best[0])
    cells = " ".join(f"{x:.1f} ({x / best[0]:.3f})" for x in best)
    print(f"{label} | {cells}", flush=True)


def print_geomeans(ratios: list[list[float]]) -> None:
    means = " ".join(f"{math.exp(sum(map(math.log, r)) / len(r)):.4f}" for r in ratios)
    print(f"# geomean vs the first build: {means}")


def compare_extend(builds: list, ratios: list[list[float]], hdims: list[int], page_sizes: list[int]) -> None:
    """Paged extend TFLOP/s of each build at each page size, then the same keys unpaged."""
    batch = be.seeded_batch()
    for d in hdims:
        for heads in ((32, 8), (16, 16)):
            flops = batch.useful_flops(heads[0], d)
            for page_size in page_sizes:
                x = be.extend_inputs(batch, heads, page_size, d)
                best = best_of_builds(builds, lambda fa3: flops / be.median_ms(be.paged_call(fa3, x)) / 1e9)
                record(ratios, best, f"extend d{d} heads {heads[0]}/{heads[1]} page {page_size}")
            best = best_of_builds(builds, lambda fa3: flops / be.median_ms(be.unpaged_call(fa3, x)) / 1e9)
            record(ratios, best, f"extend d{d} heads {heads[0]}/{heads[1]} unpaged")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=Path, help="build folders; the first is the baseline")
    parser.add_argument("--seqlens", default="512,1024,2048,4096")
    parser.add_argument("--hdims", default="64,96,128,192,256")
    parser.add_argument("--backend", choices=("auto", "portable", "sm90"), default="auto")
    parser.add_argument("--peer", choices=sorted(bp.PEERS), default="cudnn")
    parser.add_argument("--varlen", action="store_true", help="the packed workload of bench_prefill_varlen.py")
    parser.add_argument("--extend", action="store_true", help="the paged extend step of bench_extend.py")
    parser.add_argument("--page-sizes", default="1,16,64", help="with --extend")
    args = parser.parse_args()
    if len(args.builds) < 2:
        parser.error("give at least two builds to compare")
    os.environ["SGL_FLASH_ATTN3_BACKEND"] = args.backend
    from kernels import get_local_kernel

    builds = [get_local_kernel(b) for b in args.builds]
    print(versions_line())
    ratios: list[list[float]] = [[] for _ in builds]
    if args.extend:
        compare_extend(builds, ratios, [int(x) for x in args.hdims.split(",")],
                       [int(x) for x in args.page_sizes.split(",")])
        print_geomeans(ratios)
        return 0
    lengths = bv.seq_lengths()
    for d in (int(x) for x in args.hdims.split(",")):
        for causal in (False, True):
            if args.varlen:
                inputs = bv.packed_inputs(d, lengths)
                best = best_of_builds(builds, lambda fa3: bv.ours_tflops(fa3, d, causal, lengths, inputs))
                record(ratios, best, f"varlen d{d} causal={int(causal)}")
                continue
            for seqlen in (int(x) for x in args.seqlens.split(",")):
                peer = 0.0

                def measure(fa3) -> float:
                    nonlocal peer
                    # One round per call: best_of_builds alternates the builds itself.
                    ours, peer = bp.measure(fa3, bp.PEERS[args.peer], torch.bfloat16, d, d, causal, seqlen, rounds=1)
                    return ours

                best = best_of_builds(builds, measure)
                record(ratios, best, f"d{d} causal={int(causal)} seqlen={seqlen} {args.peer} {peer:.0f}")
    print_geomeans(ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
