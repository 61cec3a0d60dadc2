#!/usr/bin/env python3
"""Decode (q_len 1) KV-cache bandwidth against cuDNN attention (SDPA) in the same process.

    python scripts/bench_decode.py --out benchmarks/results/decode.csv
    python scripts/bench_decode.py --quick
    python scripts/bench_decode.py --heads 32/8 --batches 1,8 --seqlens 8192 --page-sizes 0,16
    python scripts/bench_decode.py --q-len 8 --out benchmarks/results/decode_qlen8.csv   # speculative decoding

Workload: bf16, d 128, heads (q/kv) 32/8 and 32/32, batch 1/8/32/128 x kv length 1k/8k/32k, unpaged
(page_size 0) and paged with page sizes 1/16/64 (pages scattered by a random permutation).
--q-len n gives every sequence n query rows (speculative decoding); the CSV then gains a q_len column
and unpacked_gbps, the same call with pack_gqa=False (one query head per tile instead of the heads
of a KV group folded into the tile rows).
Bytes = K + V + q + out = 2 * (b * sk * h_kv * d * 2) + 2 * (b * q_len * h_q * d * 2) (page table not counted);
GB/s = bytes / median time per call, timed (triton.testing.do_bench) as replays of a CUDA graph of
back-to-back calls, as decode is served; each rate is the best of --rounds rounds that take cuDNN and
the page sizes of a point in turn. cuDNN runs on the unpaged cache, so its number is
the same for every page size of a point. copy_gbps is a 2 GiB device-to-device copy (read + write
bytes) measured in the same run; frac_of_copy = ours_gbps / copy_gbps. Inputs smaller than 4x L2 are
cycled across copies inside the graph; points whose K+V exceed --budget-gib are skipped ('# skip' on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from bench_table import best_of_rounds, versions_line, write_table

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("dtype,batch,seqlen_k,nheads_q,nheads_kv,hdim,page_size,ours_gbps,cudnn_gbps,copy_gbps,"
           "frac_of_copy,device,date")
DTYPE, DTYPE_NAME, HDIM = torch.bfloat16, "bf16", 128
DEFAULTS = {"heads": "32/8,32/32", "batches": "1,8,32,128", "seqlens": "1024,8192,32768",
            "page_sizes": "0,1,16,64"}
QUICK = {"heads": "32/8", "batches": "8", "seqlens": "8192", "page_sizes": "0,16"}
COPY_BYTES = 2 << 30
ROTATE_L2_FACTOR = 4


@dataclass(frozen=True)
class Point:
    batch: int
    seqlen_k: int
    nheads_q: int
    nheads_kv: int
    hdim: int = HDIM
    q_len: int = 1

    def kv_bytes(self) -> int:
        return 2 * self.batch * self.seqlen_k * self.nheads_kv * self.hdim * DTYPE.itemsize

    def q_out_bytes(self) -> int:
        return 2 * self.batch * self.q_len * self.nheads_q * self.hdim * DTYPE.itemsize

    def bytes_moved(self) -> int:
        return self.kv_bytes() + self.q_out_bytes()

    def label(self) -> str:
        return f"b{self.batch} sk{self.seqlen_k} h{self.nheads_q}/{self.nheads_kv} d{self.hdim}"


@dataclass
class Buffers:
    """One copy of the decode inputs: q (b, 1, hq, d), k/v (b, sk, hkv, d), out like q."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor


def load_kernel():
    from kernels import get_local_kernel

    return get_local_kernel(ROOT / "build")


def median_ms(fn: Callable[[], object]) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


GRAPH_CALLS = 8  # calls per captured graph, so one replay's launch cost is spread thin


def graph_ms(calls: list[Callable[[], object]]) -> float:
    """Median device time per call: replays of one CUDA graph that runs the calls back to back.

    Decode steps are served from CUDA graphs; timing graph replays measures the kernels without
    the host-side gaps that eager launches of microsecond kernels would leave between them."""
    sequence = [calls[i % len(calls)] for i in range(max(GRAPH_CALLS, len(calls)))]
    return median_ms(capture(sequence).replay) / len(sequence)


def capture(calls: list[Callable[[], object]]) -> torch.cuda.CUDAGraph:
    """One CUDA graph running the calls back to back, warmed up outside the capture (plans,
    workspaces, cuDNN graphs)."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / ms / 1e6


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(), "L2_cache_size", 50 << 20) or (50 << 20)


def copy_gbps() -> float:
    """Device-to-device copy of a COPY_BYTES buffer; counts read + write bytes."""
    src = torch.empty(COPY_BYTES, device="cuda", dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    result = gbps(2 * COPY_BYTES, median_ms(lambda: dst.copy_(src)))
    del src, dst
    torch.cuda.empty_cache()
    return result


def make_buffers(p: Point) -> list[Buffers]:
    """Enough copies that their total footprint exceeds ROTATE_L2_FACTOR x L2 (one if already larger)."""
    copies = max(1, math.ceil(ROTATE_L2_FACTOR * l2_bytes() / p.bytes_moved()))
    kv_shape = (p.batch, p.seqlen_k, p.nheads_kv, p.hdim)
    q_shape = (p.batch, p.q_len, p.nheads_q, p.hdim)
    return [
        Buffers(
            q=torch.randn(q_shape, device="cuda", dtype=DTYPE),
            k=torch.randn(kv_shape, device="cuda", dtype=DTYPE),
            v=torch.randn(kv_shape, device="cuda", dtype=DTYPE),
            out=torch.empty(q_shape, device="cuda", dtype=DTYPE),
        )
        for _ in range(copies)
    ]


def paged(cache: torch.Tensor, page_size: int) -> torch.Tensor:
    """View an unpaged (b, sk, hkv, d) cache as a page pool (num_pages, page_size, hkv, d), no copy."""
    b, sk, hkv, d = cache.shape
    return cache.view(b * sk // page_size, page_size, hkv, d)


def random_page_table(batch: int, seqlen_k: int, page_size: int) -> torch.Tensor:
    """(b, sk // page_size) int32: a random permutation of the pool, so pages are scattered."""
    pages_per_seq = seqlen_k // page_size
    perm = torch.randperm(batch * pages_per_seq, device="cuda")
    return perm.to(torch.int32).view(batch, pages_per_seq)


def decode_calls(fa3, p: Point, bufs: list[Buffers], page_size: int, pack_gqa: bool | None = None,
                 num_splits: int = 0) -> list[Callable[[], object]]:
    """One flash_attn_with_kvcache call per copy of the inputs (paged when page_size > 0)."""
    cache_seqlens = torch.full((p.batch,), p.seqlen_k, device="cuda", dtype=torch.int32)
    page_table = random_page_table(p.batch, p.seqlen_k, page_size) if page_size else None
    calls = []
    for buf in bufs:
        k_cache, v_cache = (paged(x, page_size) if page_size else x for x in (buf.k, buf.v))
        calls.append(partial(fa3.flash_attn_with_kvcache, buf.q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                             page_table=page_table, causal=True, out=buf.out, pack_gqa=pack_gqa,
                             num_splits=num_splits))
    return calls


def cudnn_calls(p: Point, bufs: list[Buffers]) -> list[Callable[[], object]]:
    """SDPA on (b, h, s, d) views of each unpaged copy; run them under sdpa_kernel(CUDNN_ATTENTION)."""
    gqa = p.nheads_q != p.nheads_kv
    return [partial(F.scaled_dot_product_attention, *(x.transpose(1, 2) for x in (buf.q, buf.k, buf.v)),
                    is_causal=False, enable_gqa=gqa) for buf in bufs]


def measure_ours(fa3, p: Point, bufs: list[Buffers], page_size: int, pack_gqa: bool | None = None,
                 num_splits: int = 0) -> float:
    """GB/s of flash_attn_with_kvcache; raises NotImplementedError where the build lacks the feature."""
    return gbps(p.bytes_moved(), graph_ms(decode_calls(fa3, p, bufs, page_size, pack_gqa, num_splits)))


def measure_cudnn(p: Point, bufs: list[Buffers]) -> float | None:
    """GB/s of cuDNN SDPA on (b, h, s, d) views of the unpaged cache; None (reason on stderr) if refused.

    GQA goes through enable_gqa=True: torch's can_use_cudnn_attention checks dense inputs with
    check_batch_size_and_num_heads_dense<supports_gqa=true, ...>, so cuDNN takes hkv < hq natively
    and k/v are not expanded. is_causal=False: SDPA's is_causal is top-left aligned (the one query
    would see only key 0), while a bottom-right causal mask with q_len 1 masks nothing (with
    q_len n it masks n - 1 of sk keys for some rows: the same bytes, a negligible share of FLOPs).
    """
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        warnings.simplefilter("always")
        try:
            ms = graph_ms(cudnn_calls(p, bufs))
        except RuntimeError as e:
            reasons = "; ".join(str(w.message) for w in caught) or str(e).splitlines()[0]
            print(f"# cudnn refused {p.label()}: {reasons}", file=sys.stderr, flush=True)
            return None
    return gbps(p.bytes_moved(), ms)


def csv_row(p: Point, page_size: int, ours: float, cudnn: float | None, copy: float, device: str,
            date: str, unpacked: float | None) -> list[object]:
    cudnn_s = "" if cudnn is None else f"{cudnn:.1f}"
    row = [DTYPE_NAME, p.batch, p.seqlen_k, p.nheads_q, p.nheads_kv, p.hdim, page_size,
           f"{ours:.1f}", cudnn_s, f"{copy:.1f}", f"{ours / copy:.3f}", device, date]
    return row + [p.q_len, f"{unpacked:.1f}"] if p.q_len != 1 else row


def run_point(fa3, p: Point, page_sizes: list[int], copy: float, device: str, date: str,
              rounds: int) -> list[list[object]]:
    """All page sizes of one (batch, seqlen_k, heads) point; cuDNN measured on the unpaged cache.

    The first round finds what runs (cuDNN may refuse a shape, a build may lack a feature); the
    rates that do are read in the remaining rounds, taken in turn, and the best reading is kept."""
    bufs = make_buffers(p)
    rates: list[Callable[[], float]] = []
    first: list[float] = []
    cudnn = measure_cudnn(p, bufs)
    if cudnn is not None:
        rates.append(partial(measure_cudnn, p, bufs))
        first.append(cudnn)
    kept_pages = []
    for page_size in page_sizes:
        if page_size and p.seqlen_k % page_size:
            print(f"# skip {p.label()} page {page_size}: seqlen_k not a multiple of the page size",
                  file=sys.stderr, flush=True)
            continue
        page_rates = [partial(measure_ours, fa3, p, bufs, page_size)]
        if p.q_len != 1:
            page_rates.append(partial(measure_ours, fa3, p, bufs, page_size, pack_gqa=False))
        try:
            first += [rate() for rate in page_rates]
        except NotImplementedError as e:
            print(f"# skip {p.label()} page {page_size}: {e}", file=sys.stderr, flush=True)
            continue
        kept_pages.append(page_size)
        rates += page_rates
    best = [max(a, b) for a, b in zip(first, best_of_rounds(rates, rounds - 1))]
    if cudnn is not None:
        cudnn = best.pop(0)
    per_page = 1 if p.q_len == 1 else 2  # packed, then unpacked (page_rates)
    rows = []
    for i, page_size in enumerate(kept_pages):
        ours, *unpacked = best[i * per_page:(i + 1) * per_page]
        rows.append(csv_row(p, page_size, ours, cudnn, copy, device, date, unpacked[0] if unpacked else None))
        print(",".join(str(x) for x in rows[-1]), flush=True)
    del bufs
    torch.cuda.empty_cache()
    return rows


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_heads(text: str) -> list[tuple[int, int]]:
    return [(int(hq), int(hkv)) for hq, hkv in (pair.split("/") for pair in text.split(","))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="CSV to write (rows are printed either way)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke-test subset: heads {QUICK['heads']}, batch {QUICK['batches']}, "
                             f"seqlen {QUICK['seqlens']}, page sizes {QUICK['page_sizes']}")
    parser.add_argument("--heads", help=f"q/kv head pairs (default {DEFAULTS['heads']})")
    parser.add_argument("--batches", help=f"default {DEFAULTS['batches']}")
    parser.add_argument("--seqlens", help=f"kv lengths (default {DEFAULTS['seqlens']})")
    parser.add_argument("--page-sizes", help=f"0 = unpaged (default {DEFAULTS['page_sizes']})")
    parser.add_argument("--q-len", type=int, default=1, help="query rows per sequence (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds over cuDNN and the page sizes of a point, best kept (default 2)")
    parser.add_argument("--budget-gib", type=float, default=40.0,
                        help="skip points whose K+V exceed this many GiB (default 40)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    grid = {key: getattr(args, key) or (QUICK if args.quick else DEFAULTS)[key] for key in DEFAULTS}

    fa3 = load_kernel()
    device = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    print(f"{versions_line()}, L2 {l2_bytes() >> 20} MiB", file=sys.stderr, flush=True)
    copy = copy_gbps()
    print(f"# copy {copy:.1f} GB/s (read + write of {COPY_BYTES >> 30} GiB)", file=sys.stderr, flush=True)
    columns = COLUMNS + (",q_len,unpacked_gbps" if args.q_len != 1 else "")
    print(columns, flush=True)
    budget = int(args.budget_gib * (1 << 30))
    page_sizes = parse_ints(grid["page_sizes"])
    rows = []
    for hq, hkv in parse_heads(grid["heads"]):
        for batch in parse_ints(grid["batches"]):
            for seqlen_k in parse_ints(grid["seqlens"]):
                p = Point(batch, seqlen_k, hq, hkv, q_len=args.q_len)
                if p.kv_bytes() > budget:
                    print(f"# skip {p.label()}: K+V {p.kv_bytes() / (1 << 30):.1f} GiB > budget "
                          f"{args.budget_gib:g} GiB", file=sys.stderr, flush=True)
                    continue
                rows += run_point(fa3, p, page_sizes, copy, device, date, args.rounds)
    if args.out:
        write_table(args.out, columns.split(","), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
