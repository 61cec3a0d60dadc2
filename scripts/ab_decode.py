#!/usr/bin/env python3
"""Decode bandwidth of two or more builds of this package in one process (A/B of a change).

    python scripts/ab_decode.py BASE_BUILD NEW_BUILD [--heads 32/8] [--batches 1,8] [--page-sizes 0,16] [--q-len 8]
    python scripts/ab_decode.py BUILD --timeline      # kernels of one call, as a CUDA-graph replay runs them

Each argument is a build folder (the `build/` of a checkout). Workload and timing as in
bench_decode.py (bf16 d 128, q_len 1 unless --q-len, GB/s of K + V + q + out over CUDA-graph replays of
back-to-back calls); each point is timed in two alternating rounds and the best of each build is
kept. Prints GB/s and the ratio to the first build, cuDNN beside them, then the geometric mean.
--timeline instead profiles one replay per point and prints each kernel's duration and the gap
before it (the launch and dependency latency a call pays besides its bytes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import bench_decode as bd
from ab_prefill import best_of_builds, print_geomeans, record
from bench_table import versions_line


def points(args: argparse.Namespace) -> list[bd.Point]:
    return [bd.Point(b, sk, hq, hkv, q_len=args.q_len) for hq, hkv in bd.parse_heads(args.heads)
            for b in bd.parse_ints(args.batches) for sk in bd.parse_ints(args.seqlens)]


def compare_point(builds: list, p: bd.Point, page_sizes: list[int], ratios: list[list[float]]) -> None:
    bufs = bd.make_buffers(p)
    cudnn = bd.measure_cudnn(p, bufs) or float("nan")
    for page_size in page_sizes:
        best = best_of_builds(builds, lambda fa3: bd.measure_ours(fa3, p, bufs, page_size))
        record(ratios, best, f"{p.label()} page {page_size} cudnn {cudnn:.0f}")


def compare(builds: list, args: argparse.Namespace) -> None:
    ratios: list[list[float]] = [[] for _ in builds]
    for p in points(args):
        compare_point(builds, p, bd.parse_ints(args.page_sizes), ratios)
        torch.cuda.empty_cache()  # the point's buffers are gone
    print_geomeans(ratios)


def kernel_timeline(calls: list) -> list[tuple[str, float, float]]:
    """(kernel name, duration us, gap us since the previous kernel ended) over one graph replay."""
    graph = bd.capture(calls)
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


def print_timeline(title: str, calls: list) -> None:
    rows = kernel_timeline(calls)
    print(f"# {title}: {len(calls)} calls, {sum(d + g for _, d, g in rows) / len(calls):.1f} us per call")
    for name, dur, gap in rows:
        print(f"  {dur:7.2f} us  (gap {gap:5.2f})  {name}")


def timeline(fa3, args: argparse.Namespace) -> None:
    """Four back-to-back calls over two copies of the inputs, ours per page size, then cuDNN's."""
    for p in points(args):
        bufs = bd.make_buffers(p)[:2]
        for page_size in bd.parse_ints(args.page_sizes):
            print_timeline(f"{p.label()} page {page_size}", bd.decode_calls(fa3, p, bufs, page_size) * 2)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            print_timeline(f"cuDNN {p.label()}", bd.cudnn_calls(p, bufs) * 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=Path, help="build folders; the first is the baseline")
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seqlens", default="1024,8192")
    parser.add_argument("--page-sizes", default="0,16")
    parser.add_argument("--q-len", type=int, default=1, help="query rows per sequence (default 1)")
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
