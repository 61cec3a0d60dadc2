#!/usr/bin/env python3
"""Absorbed-MLA (qv) forward throughput: the automatic choice (the Hopper family's MLA tile on
sm90) against our portable family forced, and cuDNN SDPA on the equivalent concatenated problem
(q' = [q | qv], k' = [k | v], v) where cuDNN takes those head dims, all in one process.

    python scripts/bench_mla.py --out benchmarks/results/mla_sm90.csv

Workloads: d 64 (rope part) -> dv 512 / 256 (latent), one latent KV head. Prefill chunks (16
heads, one query head per tile), multi-token steps over a cache (128 heads packed on the KV
head, as DeepSeek's target verification issues them) and decode (one query per sequence).
FLOPs = 2 * visible (query, key) pairs * heads * (d + 2 dv), causal bottom-right aligned;
ours_kv_gbps = the K/V bytes over our time (the bound of decode). Times are medians of CUDA-event
timings. --page-size n reads the cache as pages of n keys (scattered by a random permutation)
through flash_attn_with_kvcache, as a serving engine does; the CSV then gains a page_size column.

    python scripts/bench_mla.py --page-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_decode import paged, random_page_table
from bench_prefill import load_kernel, median_ms, run_context
from bench_table import write_table

COLUMNS = ("dtype,hdim,hdim_v,causal,batch,seqlen_q,seqlen_k,nheads,ours_tflops,portable_tflops,cudnn_tflops,"
           "ratio_portable,ours_kv_gbps,gemm_tflops,device,date").split(",")
# (batch, seqlen_q, seqlen_k, heads)
WORKLOADS = [(1, 4096, 4096, 16), (1, 8192, 8192, 16), (4, 2048, 2048, 16),
             (32, 4, 4096, 128), (32, 8, 8192, 128), (8, 2, 16384, 128), (64, 4, 2048, 128),
             (1, 1, 32768, 128), (8, 1, 16384, 128), (32, 1, 8192, 128), (128, 1, 4096, 128)]


def visible_pairs(sq: int, sk: int, causal: bool) -> int:
    if not causal:
        return sq * sk
    return sum(max(min(sk - sq + i + 1, sk), 0) for i in range(sq))


def with_backend(backend: str, fn):
    os.environ["SGL_FLASH_ATTN3_BACKEND"] = backend
    try:
        return median_ms(fn)
    finally:
        os.environ["SGL_FLASH_ATTN3_BACKEND"] = "auto"


def cudnn_ms(q, qv, k, v, causal: bool) -> float | None:
    """cuDNN on [q | qv] . [k | v]^T (KV heads repeated, as SDPA needs) with the same scale; None
    where it refuses the head dims."""
    scale = (q.shape[-1] + qv.shape[-1]) ** -0.5
    h = q.shape[2]
    qt = torch.cat([q, qv], -1).transpose(1, 2)
    kt = torch.cat([k, v], -1).transpose(1, 2).expand(-1, h, -1, -1).contiguous()
    vt = v.transpose(1, 2).expand(-1, h, -1, -1).contiguous()
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return median_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale))
    except RuntimeError:
        return None


def attention_call(fa3, q, qv, k, v, out, causal: bool, page_size: int):
    """Our call on dense k/v (flash_attn_func), or on the same k/v viewed as a pool of pages of
    page_size keys read through a random page table (flash_attn_with_kvcache); split-KV heuristic,
    as flash_attn_with_kvcache defaults to."""
    if not page_size:
        return partial(fa3.flash_attn_func, q, k, v, qv=qv, causal=causal, out=out, num_splits=0)
    batch, sk = k.shape[:2]
    k_cache, v_cache = paged(k, page_size), paged(v, page_size)
    page_table = random_page_table(batch, sk, page_size)
    seqlens = torch.full((batch,), sk, device="cuda", dtype=torch.int32)
    return partial(fa3.flash_attn_with_kvcache, q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens,
                   page_table=page_table, causal=causal, out=out, num_splits=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="CSV to write (printed either way)")
    parser.add_argument("--dvs", default="512,256")
    parser.add_argument("--page-size", type=int, default=0,
                        help="keys per page of the cache (default 0: dense k/v); must divide every seqlen_k")
    args = parser.parse_args()
    if args.page_size < 0 or any(sk % max(args.page_size, 1) for _, _, sk, _ in WORKLOADS):
        parser.error(f"--page-size must be 0 or divide every workload's seqlen_k, got {args.page_size}")
    fa3 = load_kernel()
    device, date, gemm = run_context()
    rows = []
    dtype = torch.bfloat16
    for dv in (int(x) for x in args.dvs.split(",")):
        for batch, sq, sk, h in WORKLOADS:
            for causal in (True, False) if sq == sk else (True,):
                q = torch.randn(batch, sq, h, 64, device="cuda", dtype=dtype)
                qv = torch.randn(batch, sq, h, dv, device="cuda", dtype=dtype)
                k = torch.randn(batch, sk, 1, 64, device="cuda", dtype=dtype)
                v = torch.randn(batch, sk, 1, dv, device="cuda", dtype=dtype)
                out = torch.empty(batch, sq, h, dv, device="cuda", dtype=dtype)

                call = attention_call(fa3, q, qv, k, v, out, causal, args.page_size)
                flops = 2 * batch * h * visible_pairs(sq, sk, causal) * (64 + 2 * dv)
                ours_ms = with_backend("auto", call)
                ours = flops / ours_ms / 1e9
                kv_bytes = k.numel() * k.element_size() + v.numel() * v.element_size()
                portable = flops / with_backend("portable", call) / 1e9
                # Prefill chunks only: SDPA's is_causal is top-left aligned, and it needs the KV head
                # repeated per query head (a multi-token step's cache would not fit repeated).
                peer_ms = cudnn_ms(q, qv, k, v, causal) if sq == sk else None
                peer = f"{flops / peer_ms / 1e9:.1f}" if peer_ms else ""
                rows.append(["bf16", 64, dv, int(causal), batch, sq, sk, h, f"{ours:.1f}", f"{portable:.1f}", peer,
                             f"{ours / portable:.2f}", f"{kv_bytes / ours_ms / 1e6:.0f}", f"{gemm:.1f}", device, date]
                            + ([args.page_size] if args.page_size else []))
                print(",".join(str(x) for x in rows[-1]), flush=True)
                del q, qv, k, v, out
    if args.out:
        write_table(args.out, COLUMNS + (["page_size"] if args.page_size else []), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
