#!/usr/bin/env python3
"""Extend (chunked prefill) over a paged KV cache: paged throughput beside the unpaged rate.

    python scripts/bench_extend.py --out benchmarks/results/extend_paged.csv

Workload, the shape of an SGLang extend step: 8 sequences with seeded random cached prefixes of
0..8k keys and 1..2k new queries each, the new keys already in the cache; causal (bottom-right),
bf16, d 128, GQA 32/8 and MHA 16/16. The cache is a shuffled page pool addressed through a page
table (page sizes 1, 16, 64). Useful FLOPs only: per sequence 4 * h * d * (new * prefix +
(new^2 + new) / 2). Columns:
  ours_tflops      flash_attn_varlen_func with page_table (automatic kernel choice)
  unpaged_tflops   the same keys packed contiguously (cu_seqlens_k), automatic choice
  portable_tflops  the paged call on the portable family (SGL_FLASH_ATTN3_BACKEND=portable)
Medians of CUDA-event timings (triton.testing.do_bench).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from triton.testing import do_bench

from bench_table import versions_line, write_table

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("dtype,hdim,nheads_q,nheads_kv,page_size,ours_tflops,unpaged_tflops,portable_tflops,"
           "device,date").split(",")
NSEQS, MAX_PREFIX, MAX_NEW, SEED, D = 8, 8192, 2048, 0, 128
BACKEND_ENV = "SGL_FLASH_ATTN3_BACKEND"


@dataclass(frozen=True)
class Batch:
    prefix: list[int]
    new: list[int]

    @property
    def keys(self) -> list[int]:
        return [p + n for p, n in zip(self.prefix, self.new)]

    def useful_flops(self, heads: int, d: int = D) -> float:
        pairs = sum(n * p + (n * n + n) / 2 for p, n in zip(self.prefix, self.new))
        return 4 * heads * d * pairs


def seeded_batch() -> Batch:
    generator = torch.Generator().manual_seed(SEED)
    prefix = torch.randint(0, MAX_PREFIX + 1, (NSEQS,), generator=generator).tolist()
    new = torch.randint(1, MAX_NEW + 1, (NSEQS,), generator=generator).tolist()
    return Batch(prefix, new)


def cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def paged_pool(keys: torch.Tensor, lengths: list[int], page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed rows of `keys` (total, h_k, d) scattered over shuffled pages, and their table."""
    pages_per_seq = [-(-n // page_size) for n in lengths]
    num_pages = sum(pages_per_seq)
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(SEED)).to(torch.int32).cuda()
    table = torch.zeros(len(lengths), max(pages_per_seq), dtype=torch.int32, device="cuda")
    pool = torch.zeros(num_pages, page_size, *keys.shape[1:], dtype=keys.dtype, device="cuda")
    first_page, first_key = 0, 0
    for b, (n, pages) in enumerate(zip(lengths, pages_per_seq)):
        table[b, :pages] = perm[first_page : first_page + pages]
        slots = torch.arange(n, device="cuda")
        pool[table[b, slots // page_size].long(), slots % page_size] = keys[first_key : first_key + n]
        first_page, first_key = first_page + pages, first_key + n
    return pool, table


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def on_backend(backend: str, fn):
    def run():
        os.environ[BACKEND_ENV] = backend
        try:
            return fn()
        finally:
            os.environ.pop(BACKEND_ENV)

    return run


@dataclass(frozen=True)
class ExtendInputs:
    """One extend step's tensors: new queries, the keys packed and scattered over a page pool."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    table: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    used_k: torch.Tensor
    max_q: int
    max_k: int


def extend_inputs(batch: Batch, heads: tuple[int, int], page_size: int, d: int = D) -> ExtendInputs:
    h, h_k = heads
    keys = batch.keys
    q = torch.randn(sum(batch.new), h, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(sum(keys), h_k, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k_pool, table = paged_pool(k, keys, page_size)
    v_pool, _ = paged_pool(v, keys, page_size)
    return ExtendInputs(q, k, v, k_pool, v_pool, table, cumulative(batch.new), cumulative(keys),
                        torch.tensor(keys, dtype=torch.int32, device="cuda"), max(batch.new), max(keys))


def paged_call(fa3, x: ExtendInputs):
    return lambda: fa3.flash_attn_varlen_func(x.q, x.k_pool, x.v_pool, x.cu_q, None, x.max_q, x.max_k,
                                              seqused_k=x.used_k, page_table=x.table, causal=True)


def unpaged_call(fa3, x: ExtendInputs):
    return lambda: fa3.flash_attn_varlen_func(x.q, x.k, x.v, x.cu_q, x.cu_k, x.max_q, x.max_k, causal=True)


def measure(fa3, batch: Batch, heads: tuple[int, int], page_size: int) -> tuple[float, float, float]:
    x = extend_inputs(batch, heads, page_size)
    paged, unpaged = paged_call(fa3, x), unpaged_call(fa3, x)
    torch.testing.assert_close(paged(), unpaged(), rtol=0, atol=0)  # the same kernel math on the same keys
    flops = batch.useful_flops(heads[0])
    times = (median_ms(paged), median_ms(unpaged), median_ms(on_backend("portable", paged)))
    return tuple(flops / ms / 1e9 for ms in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="CSV to write (printed either way)")
    parser.add_argument("--page-sizes", default="1,16,64")
    parser.add_argument("--heads", default="32/8,16/16", help="q/kv head counts, comma-separated")
    args = parser.parse_args()

    from kernels import get_local_kernel

    fa3 = get_local_kernel(ROOT / "build")
    device, date = torch.cuda.get_device_name(), datetime.date.today().isoformat()
    print(versions_line(), file=sys.stderr)
    batch = seeded_batch()
    print(f"# prefixes {batch.prefix}, new {batch.new}", file=sys.stderr)
    rows = []
    print(",".join(COLUMNS))
    for heads in (tuple(int(x) for x in pair.split("/")) for pair in args.heads.split(",")):
        for page_size in (int(x) for x in args.page_sizes.split(",")):
            ours, unpaged, portable = measure(fa3, batch, heads, page_size)
            rows.append(["bf16", D, *heads, page_size, f"{ours:.1f}", f"{unpaged:.1f}", f"{portable:.1f}", device, date])
            print(",".join(str(x) for x in rows[-1]), flush=True)
    if args.out:
        write_table(args.out, COLUMNS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
