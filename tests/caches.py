"""Paged KV pools for tests: shuffled pages and page tables with free row stride."""

from __future__ import annotations

import torch


def paged_cache(lengths, page_size, h_k, d, dv, dtype, extra_pages=3):
    """A shuffled page pool holding `lengths` keys per row, and a page table with free row stride."""
    pages_per_row = [max(1, -(-n // page_size)) for n in lengths]
    max_pages = max(pages_per_row) + 1
    num_pages = sum(pages_per_row) + extra_pages
    perm = torch.randperm(num_pages, device="cuda").to(torch.int32)
    table = torch.zeros(len(lengths), max_pages + 5, dtype=torch.int32, device="cuda")[:, :max_pages]  # strided rows
    start = 0
    for b, n in enumerate(pages_per_row):
        table[b, :n] = perm[start : start + n]
        start += n

    def pool(dim):
        return torch.randn(num_pages, page_size, h_k, dim, dtype=dtype, device="cuda")

    return pool(d), pool(dv), table


def nan_past_the_keys(k_cache, v_cache, lengths, table=None):
    """Fill every cache slot past each row's keys with NaN, as uninitialised memory may hold: in a
    dense cache the rest of the row, in a paged one the rest of the row's own last page."""
    for row, n in enumerate(lengths):
        if table is None:
            k_cache[row, n:] = float("nan")
            v_cache[row, n:] = float("nan")
            continue
        page_size = k_cache.shape[1]
        slots = torch.arange(n, -(-n // page_size) * page_size, device="cuda")
        pages = table[row, slots // page_size].long()
        k_cache[pages, slots % page_size] = float("nan")
        v_cache[pages, slots % page_size] = float("nan")
