#!/usr/bin/env python3
"""Representative KV-cache calls of the portable family (decode and short-query tiles with
swizzled and padded shared-memory rows, split-KV merged by the last split CTA of each tile or,
past 8 splits and after prefill tiles, by the combine kernel, paged caches of 1, 16 and 64 keys, in-place
append with rotary, absorbed-MLA qv, deterministic splits), and its d64 / d128 prefill tiles on
ragged, causal and windowed problems, for running under compute-sanitizer, without the reference
(whose host code the tools slow down):

    compute-sanitizer --tool memcheck  python scripts/sanitize_decode.py
    compute-sanitizer --tool racecheck python scripts/sanitize_decode.py
    compute-sanitizer --tool synccheck python scripts/sanitize_decode.py
"""
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def lengths(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device="cuda")


def main() -> None:
    from kernels import get_local_kernel

    fa3 = get_local_kernel(ROOT / "build")
    torch.manual_seed(0)
    seqlens = lengths(700, 1, 129)
    # d96 keeps padded rows; 13 splits of the 13 key blocks go to the combine kernel
    for d, num_splits in ((128, 0), (128, 5), (128, 13), (96, 0), (64, 1)):
        q, k, v = randn(3, 1, 8, d), randn(3, 800, 2, d), randn(3, 800, 2, d)
        fa3.flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, causal=True, num_splits=num_splits)
    q = randn(3, 8, 8, 128)  # 8 queries x 4 heads per kv head: the short-query tile
    for num_splits in (0, 4):
        fa3.flash_attn_with_kvcache(q, randn(3, 800, 2, 128), randn(3, 800, 2, 128), cache_seqlens=seqlens,
                                    causal=True, num_splits=num_splits)
    for page_size in (1, 16, 64):
        pages = 3 * -(-800 // page_size)
        k, v = randn(pages, page_size, 2, 128), randn(pages, page_size, 2, 128)
        table = torch.randperm(pages, device="cuda", dtype=torch.int32).view(3, -1)
        fa3.flash_attn_with_kvcache(randn(3, 1, 8, 128), k, v, cache_seqlens=seqlens, page_table=table,
                                    causal=True, sinks=torch.randn(8, device="cuda"))
    k, v = randn(3, 800, 2, 128), randn(3, 800, 2, 128)
    cos, sin = torch.randn(1024, 32, device="cuda"), torch.randn(1024, 32, device="cuda")
    fa3.flash_attn_with_kvcache(randn(3, 2, 8, 128), k, v, k=randn(3, 2, 2, 128), v=randn(3, 2, 2, 128),
                                rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens, causal=True)
    ckv = randn(3, 800, 1, 512)
    fa3.flash_attn_with_kvcache(randn(3, 1, 16, 64), randn(3, 800, 1, 64), ckv, qv=randn(3, 1, 16, 512),
                                cache_seqlens=seqlens, causal=True)
    fa3.flash_attn_with_kvcache(randn(3, 1, 8, 128), k, v, cache_seqlens=seqlens, causal=True, deterministic=True)
    os.environ["SGL_FLASH_ATTN3_BACKEND"] = "portable"  # prefill would run on the Hopper family
    for d in (64, 128):
        q, k, v = randn(2, 333, 4, d), randn(2, 461, 4, d), randn(2, 461, 4, d)
        fa3.flash_attn_func(q, k, v)
        fa3.flash_attn_func(q, k, v, causal=True)
        fa3.flash_attn_func(q, k, v, window_size=(100, 20))
        fa3.flash_attn_func(q, k, v, causal=True, num_splits=3)  # a split prefill tile
    torch.cuda.synchronize()
    print("sanitizer calls done")


if __name__ == "__main__":
    main()
