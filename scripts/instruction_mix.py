#!/usr/bin/env python3
"""Executed instructions of a forward kernel by opcode, per warp and key block (what ncu's
per-instruction counters say a kernel issues beside its MMAs).

    # one prefill call per launch, to profile (ours: a build folder; or torch's FA2 / cuDNN)
    ncu --section SourceCounters -k regex:fwd_kernel --launch-skip 2 --launch-count 1 -o ours \\
        python scripts/instruction_mix.py call build --backend portable --hdim 128 --seqlen 4096
    ncu -i ours.ncu-rep --page source --csv --print-source sass > ours.csv
    # the mix, divided by (warps x key blocks) of that call
    python scripts/instruction_mix.py mix ours.csv --per 524288

The call uses bench_prefill.py's shapes (bf16, batch * seqlen = 16k, heads * d = 2048). `mix`
prints the total, the opcodes of the instructions executed at least --loop-fraction as often as
the most frequent one (the key-block loop), and the rest.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import sys
from pathlib import Path


def call(args: argparse.Namespace) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_prefill import HIDDEN, TOKENS  # the same shapes as the tables

    batch, heads = TOKENS // args.seqlen, HIDDEN // args.hdim
    q, k, v = (torch.randn(batch, args.seqlen, heads, args.hdim, dtype=torch.bfloat16, device="cuda")
               for _ in range(3))
    if args.build in ("fa2", "cudnn"):
        backend = SDPBackend.FLASH_ATTENTION if args.build == "fa2" else SDPBackend.CUDNN_ATTENTION
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(backend):
            for _ in range(args.calls):
                torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=args.causal)
    else:
        from kernels import get_local_kernel

        os.environ["SGL_FLASH_ATTN3_BACKEND"] = args.backend
        fa3 = get_local_kernel(Path(args.build))
        for _ in range(args.calls):
            fa3.flash_attn_func(q, k, v, causal=args.causal)
    torch.cuda.synchronize()
    return 0


def opcode(source: str) -> str:
    words = [w for w in source.split() if not w.startswith("@")]
    return words[0].split(".")[0] if words else "?"


def mix(args: argparse.Namespace) -> int:
    if not args.csv.is_file():
        raise SystemExit(f"{args.csv}: not a file (an ncu source-page CSV)")
    with open(args.csv, newline="") as f:
        rows = list(csv.reader(f))
    header = next(i for i, r in enumerate(rows) if "Instructions Executed" in r)
    cols = rows[header]
    source, executed = cols.index("Source"), cols.index("Instructions Executed")
    counts = [(opcode(r[source]), int(r[executed] or 0)) for r in rows[header + 1:] if len(r) > executed]
    if not counts:
        raise SystemExit(f"{args.csv}: no instruction rows (export with --page source --csv --print-source sass)")
    top = max(n for _, n in counts)
    loop = collections.Counter()
    rest = collections.Counter()
    for op, n in counts:
        (loop if n >= args.loop_fraction * top else rest)[op] += n
    print(f"total {sum(n for _, n in counts) / args.per:.1f} per unit; loop {sum(loop.values()) / args.per:.1f}, "
          f"outside {sum(rest.values()) / args.per:.1f}")
    for name, table in (("loop", loop), ("outside", rest)):
        cells = ", ".join(f"{op} {n / args.per:.1f}" for op, n in table.most_common(args.top))
        print(f"{name}: {cells}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("call", help="run one prefill shape (to be profiled)")
    c.add_argument("build", help="a build folder, or fa2 / cudnn for torch's SDPA backends")
    c.add_argument("--backend", choices=("auto", "portable", "sm90"), default="auto")
    c.add_argument("--hdim", type=int, default=128)
    c.add_argument("--seqlen", type=int, default=4096)
    c.add_argument("--causal", action="store_true")
    c.add_argument("--calls", type=int, default=4)
    m = sub.add_parser("mix", help="opcode mix of an ncu source-page CSV")
    m.add_argument("csv", type=Path)
    m.add_argument("--per", type=float, default=1.0, help="divide counts by this (e.g. warps x key blocks)")
    m.add_argument("--loop-fraction", type=float, default=0.75)
    m.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    return call(args) if args.command == "call" else mix(args)


if __name__ == "__main__":
    sys.exit(main())
