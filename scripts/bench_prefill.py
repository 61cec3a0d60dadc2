#!/usr/bin/env python3
"""Prefill forward throughput against a peer in the same process: cuDNN attention (SDPA,
default) or torch's own FlashAttention-2 (--peer fa2).

    python scripts/bench_prefill.py --out benchmarks/results/prefill_sm90.csv
    python scripts/bench_prefill.py --peer fa2 --dtypes bf16 --hdims 64,128 \
        --out benchmarks/results/prefill_portable.csv

Workload: batch * seqlen = 16k tokens, heads * d = 2048. FLOPs = 4 * b * h * sq * sk * d
(2 * (d + dv) when dv != d), halved for causal. Times are medians of CUDA-event timings
(triton.testing.do_bench), each the best of ROUNDS rounds that alternate ours and the peer: a
power-capped GPU drifts by 10% and more within a run, and a single back-to-back pair keeps the
ratio fair but not the rates. gemm_tflops is a bf16 8192^3 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from bench_table import best_of_rounds, versions_line, write_table

ROOT = Path(__file__).resolve().parent.parent
PEERS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}


def columns(peer: str) -> list[str]:
    return (f"dtype,hdim,hdim_v,causal,seqlen,batch,nheads,ours_tflops,{peer}_tflops,ratio,gemm_tflops,"
            "device,date").split(",")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOKENS, HIDDEN = 16384, 2048
ROUNDS = 2


def load_kernel():
    from kernels import get_local_kernel

    return get_local_kernel(ROOT / "build")


def median_ms(fn) -> float:
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def gemm_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / median_ms(lambda: a @ b) / 1e9


def run_context() -> tuple[str, str, float]:
    """The GPU's name and today's date for the table rows, printed with the versions, and the
    bf16 GEMM rate of this run."""
    print(versions_line(), file=sys.stderr)
    return torch.cuda.get_device_name(), datetime.date.today().isoformat(), gemm_tflops()


def attention_flops(batch: int, heads: int, seqlen: int, d: int, dv: int, causal: bool) -> float:
    flops = 2 * batch * heads * seqlen * seqlen * (d + dv)
    return flops / 2 if causal else flops


def measure(fa3, peer: SDPBackend, dtype: torch.dtype, d: int, dv: int, causal: bool, seqlen: int,
            rounds: int = ROUNDS) -> tuple[float, float]:
    """(ours, peer) TFLOP/s, each the best of `rounds` rounds that alternate the two."""
    batch, heads = TOKENS // seqlen, HIDDEN // d
    q = torch.randn(batch, seqlen, heads, d, device="cuda", dtype=dtype)
    k = torch.randn(batch, seqlen, heads, d, device="cuda", dtype=dtype)
    v = torch.randn(batch, seqlen, heads, dv, device="cuda", dtype=dtype)
    out = torch.empty(batch, seqlen, heads, dv, device="cuda", dtype=dtype)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    flops = attention_flops(batch, heads, seqlen, d, dv, causal)

    def ours() -> float:
        return flops / median_ms(lambda: fa3.flash_attn_func(q, k, v, causal=causal, out=out)) / 1e9

    def theirs() -> float:
        with sdpa_kernel(peer):
            return flops / median_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)) / 1e9

    ours_rate, peer_rate = best_of_rounds([ours, theirs], rounds)
    return ours_rate, peer_rate


def summarize(rows: list[list]) -> None:
    """Geometric mean and minimum of the ratios, over all points and over seqlen >= 1k."""
    for label, keep in (("all", lambda r: True), ("seqlen>=1k", lambda r: r[4] >= 1024)):
        ratios = [float(r[9]) for r in rows if keep(r)]
        if ratios:
            geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            print(f"# {label}: geomean ratio {geo:.3f}, min {min(ratios):.3f} over {len(ratios)} points",
                  file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="CSV to write (printed either way)")
    parser.add_argument("--peer", choices=sorted(PEERS), default="cudnn", help="SDPA backend to compare with")
    parser.add_argument("--dtypes", default="bf16,fp16")
    parser.add_argument("--hdims", default="64,96,128,192,256")
    parser.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--backend", choices=("auto", "portable", "sm90"), default="auto",
                        help="kernel family (SGL_FLASH_ATTN3_BACKEND)")
    args = parser.parse_args()
    os.environ["SGL_FLASH_ATTN3_BACKEND"] = args.backend

    fa3 = load_kernel()
    device, date, gemm = run_context()
    rows = []
    for dname in args.dtypes.split(","):
        for d in (int(x) for x in args.hdims.split(",")):
            for causal in (False, True):
                for seqlen in (int(x) for x in args.seqlens.split(",")):
                    try:
                        ours, other = measure(fa3, PEERS[args.peer], DTYPES[dname], d, d, causal, seqlen)
                    except NotImplementedError as e:
                        print(f"# skip {dname} d{d}: {e}", file=sys.stderr)
                        break
                    rows.append([dname, d, d, int(causal), seqlen, TOKENS // seqlen, HIDDEN // d,
                                 f"{ours:.1f}", f"{other:.1f}", f"{ours / other:.3f}", f"{gemm:.1f}", device, date])
                    print(",".join(str(x) for x in rows[-1]), flush=True)
    summarize(rows)
    if args.out:
        write_table(args.out, columns(args.peer), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
