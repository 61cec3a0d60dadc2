#!/usr/bin/env python3
"""Decode bandwidth of two or more builds of this package in one process (A/B of a change).

    python scripts/ab_decode.py BASE_BUILD NEW_BUILD [--heads 32/8] [--batches 1,8] [--page-sizes 0,16]
    python scripts/ab_decode.py BUILD --timeline      # kernels of one call, as a CUDA-graph replay runs them

Each argument is a build folder (the `build/` of a checkout). Workload and timing as in
bench_decode.py (bf16 d 128, q_len 1, GB/s of K + V + q + out over CUDA-graph replays of
back-to-back calls); each point is timed in two alternating rounds and the best of each build is
kept. Prints GB/s and the ratio to the first build, cuDNN beside them, then the geometric mean.
--timeline instead profiles one replay per point and prints each kernel's duration and the gap
before it (the launch and dependency latency a call pays besides its bytes).
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import bench_decode as bd
from bench_table import versions_line


def points(args: argparse.Namespace) -> list[bd.Point]:
    return [bd.Point(b, sk, hq, hkv) for hq, hkv in bd.parse_heads(args.heads)
            for b in bd.parse_ints(args.batches) for sk in bd.parse_ints(args.seqlens)]


def compare(builds: list, args: argparse.Namespace) -> None:
    ratios: list[list[float]] = [[] for _ in builds]
    for p in points(args):
        bufs = bd.make_buffers(p)
        cudnn = bd.measure_cudnn(p, bufs) or float("nan")
        for page_size in bd.parse_ints(args.page_sizes):
            best = [0.0] * len(builds)
            for _ in range(2):
                for i, fa3 in enumerate(builds):
                    best[i] = max(best[i], bd.measure_ours(fa3, p, bufs, page_size))
            for i, x in enumerate(best):
                ratios[i].append(x / best[0])
            cells = " ".join(f"{x:.0f} ({x / best[0]:.3f})" for x in best)
            print(f"{p.label()} page {page_size} cudnn {cudnn:.0f} | {cells}", flush=True)
        del bufs
        torch.cuda.empty_cache()
    means = " ".join(f"{math.exp(sum(map(math.log, r)) / len(r)):.4f}" for r in ratios)
    print(f"# geomean vs the first build: {means}")


def kernel_timeline(calls: list) -> list[tuple[str, float, float]]:
    """(kernel name, duration us, gap us since the previous kernel ended) over one graph replay."""
    graph = torch.cuda.CUDAGraph()
    for call in calls:
        call()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    rows, end = [], None
    for e in kernels:
        start = e.time_range.start
        rows.append((e.name[:60], e.time_range.elapsed_us(), 0.0 if end is None else start - end))
        end = e.time_range.end
    return rows


def timeline(fa3, args: argparse.Namespace) -> None:
    for p in points(args):
        bufs = bd.make_buffers(p)[:2]
        for page_size in bd.parse_ints(args.page_sizes):
            cache_seqlens = torch.full((p.batch,), p.seqlen_k, device="cuda", dtype=torch.int32)
            page_table = bd.random_page_table(p, page_size) if page_size else None
            calls = [partial(fa3.flash_attn_with_kvcache, buf.q, *(bd.paged(x, page_size) if page_size else x
                                                                  for x in (buf.k, buf.v)),
                             cache_seqlens=cache_seqlens, page_table=page_table, causal=True, out=buf.out)
                     for buf in bufs] * 2
            rows = kernel_timeline(calls)
            print(f"# {p.label()} page {page_size}: {len(calls)} calls, "
                  f"{sum(d + g for _, d, g in rows) / len(calls):.1f} us per call")
            for name, dur, gap in rows:
                print(f"  {dur:7.2f} us  (gap {gap:5.2f})  {name}")
        gqa = p.nheads_q != p.nheads_kv
        sdpa = [partial(torch.nn.functional.scaled_dot_product_attention,
                        *(x.transpose(1, 2) for x in (buf.q, buf.k, buf.v)), enable_gqa=gqa) for buf in bufs] * 2
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            rows = kernel_timeline(sdpa)
        print(f"# cuDNN {p.label()}")
        for name, dur, gap in rows:
            print(f"  {dur:7.2f} us  (gap {gap:5.2f})  {name}")
        del bufs
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=Path, help="build folders; the first is the baseline")
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seqlens", default="1024,8192")
    parser.add_argument("--page-sizes", default="0,16")
    parser.add_argument("--timeline", action="store_true", help="profile the last build's kernels instead")
    args = parser.parse_args()
    from kernels import get_local_kernel

    builds = [get_local_kernel(b) for b in args.builds]
    print(versions_line())
    if args.timeline:
        timeline(builds[-1], args)
    elif len(builds) < 2:
        parser.error("give at least two builds to compare, or --timeline")
    else:
        compare(builds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
