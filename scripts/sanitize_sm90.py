#!/usr/bin/env python3
"""Representative calls of the Hopper family (every tile shape class: ping-pong groups, three
groups, three K/V stages, O staged in Q's bytes, window, causal, varlen with empty sequences,
sinks, paged k/v gathered with cp.async or loaded in page boxes by TMA, GQA heads packed into the
tile rows with Q gathered by cp.async, the absorbed-MLA tile with qv, its groups handing P over
through shared memory, and its key splits; and grids of more tiles than SMs)
for running under compute-sanitizer, without the reference (whose host code the tools slow down):

    compute-sanitizer --tool racecheck python scripts/sanitize_sm90.py
    compute-sanitizer --tool synccheck python scripts/sanitize_sm90.py
    compute-sanitizer --tool memcheck  python scripts/sanitize_sm90.py
"""
import itertools
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")


def main() -> None:
    from kernels import get_local_kernel

    os.environ["SGL_FLASH_ATTN3_BACKEND"] = "sm90"  # an error, not a fallback, if a call cannot run there
    fa3 = get_local_kernel(ROOT / "build")
    torch.manual_seed(0)
    for d, causal in ((128, False), (128, True), (64, True), (96, True), (256, True), (192, False)):
        q, k, v = randn(2, 300, 4, d), randn(2, 517, 2, d), randn(2, 517, 2, d)
        fa3.flash_attn_func(q, k, v, causal=causal, window_size=(100, -1) if d == 64 else (-1, -1))
    # More tiles than SMs (several per CTA: on two-group tiles each tile's epilogue runs under the
    # next tile's first Q K^T), dense and varlen (each sequence's last tile stores O row by row;
    # d192 -> 128: one Q buffer, each group's own key blocks, groups without keys), with sinks.
    for d, dv in ((128, 128), (96, 96), (192, 128)):
        q, k, v = randn(4, 1000, 16, d), randn(4, 1000, 4, d), randn(4, 1000, 4, dv)
        fa3.flash_attn_func(q, k, v, causal=True, sinks=torch.randn(16, device="cuda"))
    lq = [700, 5, 1000, 333, 129] * 12
    for d, dv in ((128, 128), (192, 128)):
        q, k, v = randn(sum(lq), 8, d), randn(sum(lq), 8, d), randn(sum(lq), 8, dv)
        fa3.flash_attn_varlen_func(q, k, v, cu_seqlens(lq), cu_seqlens(lq), max(lq), max(lq), causal=d == 192)
    lq, lk = [0, 17, 300, 1, 250, 129], [5, 0, 400, 64, 1, 700]
    q, k, v = randn(sum(lq), 4, 128), randn(sum(lk), 2, 128), randn(sum(lk), 2, 128)
    sinks = torch.randn(4, device="cuda")
    fa3.flash_attn_varlen_func(q, k, v, cu_seqlens(lq), cu_seqlens(lk), max(lq), max(lk), causal=True, sinks=sinks)
    # Paged pools (pages in reverse order; 1 to 256 keys, 12 and 48 not powers of two) with 128-
    # and 64-byte swizzled rows and uneven row groups per producer warp; pages of 64 (d128, d256)
    # and 256 (d192) load by TMA in their tile's largest boxes, pages of 48 (d128) in 16-row
    # boxes; pages of 16 on d96 (64-byte swizzled rows) are gathered.
    for d, page_size in ((128, 1), (64, 12), (96, 16), (256, 64), (192, 8), (128, 64), (192, 256), (128, 48)):
        lq, lk = [200, 17, 300], [300, 0, 517]
        pages = [max(1, -(-n // page_size)) for n in lk]
        table = torch.zeros(len(lk), max(pages), dtype=torch.int32, device="cuda")
        ids = torch.arange(sum(pages), dtype=torch.int32, device="cuda").flip(0)
        for b, first in enumerate(itertools.accumulate([0, *pages[:-1]])):
            table[b, : pages[b]] = ids[first : first + pages[b]]
        k_pool, v_pool = randn(sum(pages), page_size, 2, d), randn(sum(pages), page_size, 2, d)
        fa3.flash_attn_varlen_func(randn(sum(lq), 4, d), k_pool, v_pool, cu_seqlens(lq), None, max(lq), max(lk),
                                   seqused_k=torch.tensor(lk, dtype=torch.int32, device="cuda"), page_table=table,
                                   causal=True)
    # Packed GQA (groups of 3 and 8 heads): Q rows gathered, O and LSE stored row by row; dense,
    # varlen with sinks and an empty sequence, and over a paged pool (Q and K/V gathered).
    for d, causal in ((128, True), (64, False), (256, True), (96, True)):
        q, k, v = randn(2, 100, 6, d), randn(2, 333, 2, d), randn(2, 333, 2, d)
        fa3.flash_attn_func(q, k, v, causal=causal, pack_gqa=True)
    lq, lk = [0, 40, 300, 1], [5, 0, 400, 64]
    q, k, v = randn(sum(lq), 16, 128), randn(sum(lk), 2, 128), randn(sum(lk), 2, 128)
    fa3.flash_attn_varlen_func(q, k, v, cu_seqlens(lq), cu_seqlens(lk), max(lq), max(lk), causal=True,
                               sinks=torch.randn(16, device="cuda"), pack_gqa=True)
    fa3.flash_attn_varlen_func(randn(sum(lq), 6, 128), k_pool[..., :128], v_pool[..., :128], cu_seqlens(lq), None,
                               max(lq), 517, seqused_k=torch.tensor([5, 0, 400, 64], dtype=torch.int32, device="cuda"),
                               page_table=table[[0, 1, 2, 2]], causal=True, pack_gqa=True)
    # Absorbed MLA (qv, dv 512 and 256): one head per tile with the key count ending inside a
    # block, 128 heads packed on one KV head (Q and Qv gathered), over a paged pool.
    for dv in (512, 256):
        q, qv, k, v = randn(2, 150, 4, 64), randn(2, 150, 4, dv), randn(2, 333, 1, 64), randn(2, 333, 1, dv)
        fa3.flash_attn_func(q, k, v, qv=qv, causal=True)
        q, qv = randn(2, 3, 128, 64), randn(2, 3, 128, dv)
        fa3.flash_attn_func(q, k, v, qv=qv, causal=True, pack_gqa=True)
        k_pool, v_pool = randn(sum(pages), page_size, 1, 64), randn(sum(pages), page_size, 1, dv)
        lq, used = [2, 3, 3], [300, 0, 517]  # the last pool's table (pages of 8 keys)
        fa3.flash_attn_varlen_func(randn(sum(lq), 128, 64), k_pool, v_pool, cu_seqlens(lq), None, max(lq), max(used),
                                   qv=randn(sum(lq), 128, dv), seqused_k=torch.tensor(used, dtype=torch.int32, device="cuda"),
                                   page_table=table, causal=True, pack_gqa=True)
        # Decode-sized: one query x 128 heads over a long cache, keys split (partials + combine).
        k_cache, v_cache = randn(2, 3000, 1, 64), randn(2, 3000, 1, dv)
        fa3.flash_attn_with_kvcache(randn(2, 1, 128, 64), k_cache, v_cache, qv=randn(2, 1, 128, dv),
                                    cache_seqlens=torch.tensor([3000, 700], dtype=torch.int32, device="cuda"),
                                    causal=True, sinks=torch.randn(128, device="cuda"))
    torch.cuda.synchronize()
    print("sanitizer calls done")


if __name__ == "__main__":
    main()
