"""The Hopper (TMA + wgmma) family against attention_ref, O and LSE, outputs poisoned first.

Every call here runs with SGL_FLASH_ATTN3_BACKEND=sm90, which makes a call that the Hopper family
cannot take an error instead of a silent fallback: a passing test ran the Hopper kernel.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from caches import nan_past_the_keys, paged_cache
from tolerance import check_against_ref, poisoned_like

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs a Hopper GPU"
    ),
]

DTYPES = [torch.float16, torch.bfloat16]
# (d, dv) pairs of the Hopper family without qv (the absorbed-MLA pairs have their own tests below).
PAIRS = [(64, 64), (96, 96), (128, 128), (192, 192), (256, 256), (192, 128)]
HEADS = [(3, 3), (6, 2), (5, 1)]
# More than a decode's worth of query rows (decode tiles stay on the portable family). The
# unpacked cases ask for pack_gqa=False (one head per tile): with packing, 17 queries x 3 heads
# would be a short-query tile, which stays portable too.
SEQLENS = [(17, 1), (113, 203), (128, 217), (300, 128), (1023, 1024)]
# GQA groups for packed tiles: 3 and 5 heads per KV head (a tile row's head is row % group, and
# groups of 8 rows mix heads), 8 (a typical server model), and every packed row count > 64
# (fewer would be a short-query tile).
PACK_HEADS = [(6, 2), (5, 1), (16, 2)]
PACK_SEQLENS = [(23, 1), (113, 203), (300, 128), (1023, 1024)]


@pytest.fixture(autouse=True)
def force_sm90(monkeypatch):
    monkeypatch.setenv("SGL_FLASH_ATTN3_BACKEND", "sm90")


def randn(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device="cuda")


def check(fa3, name, out, lse, q, k, v, factor=2.0, **ref_kwargs):
    return check_against_ref(fa3, name, out, lse, ref_kwargs, q, k, v, factor)


# (heads, seqlens, pack_gqa): one head per tile over the full grid, then packed tiles.
DENSE_CASES = [(hd, sl, False) for hd in HEADS for sl in SEQLENS] + [
    (hd, sl, True) for hd in PACK_HEADS for sl in PACK_SEQLENS
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", PAIRS, ids=[f"d{d}-{dv}" for d, dv in PAIRS])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", DENSE_CASES, ids=[f"h{h}-{hk}-s{sq}-{sk}-{'pack' if pk else 'heads'}"
                                                   for (h, hk), (sq, sk), pk in DENSE_CASES])
def test_dense(fa3, dtype, dims, causal, case):
    """Dense q/k/v; with pack_gqa the heads of a KV group share the tile rows (row r: query
    r // group, head r % group)."""
    (h, h_k), (sq, sk), pack_gqa = case
    torch.manual_seed(hash((str(dtype), dims, causal, case)) % 2**31)
    (d, dv), b = dims, 2
    q, k, v = randn(b, sq, h, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype), randn(b, sk, h_k, dv, dtype=dtype)
    out = poisoned_like((b, sq, h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out, pack_gqa=pack_gqa)
    check(fa3, "pack_gqa" if pack_gqa else "dense", got, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_pack_gqa_by_default_for_short_chunks(fa3, causal):
    """pack_gqa=None packs a short chunk over a long cache (96 queries x 4 heads per KV head): the
    same tiles, bit for bit, as pack_gqa=True."""
    torch.manual_seed(4)
    b, sq, sk, h, h_k, d = 3, 96, 2000, 32, 8, 128
    q, k, v = randn(b, sq, h, d, dtype=torch.bfloat16), randn(b, sk, h_k, d, dtype=torch.bfloat16), randn(
        b, sk, h_k, d, dtype=torch.bfloat16)
    out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    check(fa3, "short chunk", got, lse, q, k, v, causal=causal)
    packed, packed_lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, pack_gqa=True)
    assert torch.equal(got, packed) and torch.equal(lse, packed_lse)


@pytest.mark.parametrize("heads", [(64, 1), (160, 2)])
@pytest.mark.parametrize("seqlens", [(3, 500), (40, 333)])
@pytest.mark.parametrize("causal", [False, True])
def test_pack_gqa_groups_larger_than_a_tile(fa3, heads, seqlens, causal):
    """64 and 80 heads per KV head: one tile holds one or two queries' heads, or part of one."""
    torch.manual_seed(hash((heads, seqlens, causal)) % 2**31)
    (h, h_k), (sq, sk), b, d = heads, seqlens, 2, 128
    q, k, v = randn(b, sq, h, d, dtype=torch.bfloat16), randn(b, sk, h_k, d, dtype=torch.bfloat16), randn(
        b, sk, h_k, d, dtype=torch.bfloat16)
    sinks = torch.randn(h, device="cuda")
    out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, sinks=sinks, return_softmax_lse=True, out=out,
                                   pack_gqa=True)
    check(fa3, "large group", got, lse, q, k, v, causal=causal, sinks=sinks)


@pytest.mark.parametrize("rotary", [False, True])
def test_pack_gqa_kvcache_append(fa3, rotary):
    """A short chunk appended in place (dense cache, cache_batch_idx, and cache_leftpad or rotary)
    and attended with packed heads; cache slots past the keys hold NaN and never reach the result."""
    torch.manual_seed(17 + rotary)
    b, rows, capacity, h, h_k, d, sq, dtype = 3, 5, 512, 32, 8, 128, 24, torch.bfloat16
    cache_lens, leftpad = [0, 37, 300], [0, 0, 0] if rotary else [0, 10, 290]
    k_cache, v_cache = randn(rows, capacity, h_k, d, dtype=dtype), randn(rows, capacity, h_k, d, dtype=dtype)
    cache_rows = ints([4, 0, 2])
    for b_row, row in enumerate([4, 0, 2]):
        k_cache[row, cache_lens[b_row] + sq:] = float("nan")
        v_cache[row, cache_lens[b_row] + sq:] = float("nan")
    k0, v0 = k_cache.clone(), v_cache.clone()
    k_new, v_new = randn(b, sq, h_k, d, dtype=dtype), randn(b, sq, h_k, d, dtype=dtype)
    extra = {}
    if rotary:
        angles = torch.rand(1024, 32, device="cuda") * 6.28
        extra = dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype), rotary_interleaved=False)
    seqlens = ints(cache_lens)
    q = randn(b, sq, h, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, cache_batch_idx=cache_rows,
        cache_leftpad=ints(leftpad), causal=True, return_softmax_lse=True, out=out, pack_gqa=True, **extra,
    )
    ref = check(fa3, "packed append", got, lse, q, torch.nan_to_num(k0), torch.nan_to_num(v0), seqused_k=seqlens,
                k_new=k_new, v_new=v_new, cache_batch_idx=cache_rows, cache_leftpad=ints(leftpad), causal=True,
                **extra)
    written = [(row, slice(n, n + sq)) for row, n in zip([4, 0, 2], cache_lens)]
    for row, slots in written:
        torch.testing.assert_close(k_cache[row, slots], ref.k_cache[row, slots], rtol=2**-7, atol=1e-3)
        torch.testing.assert_close(v_cache[row, slots], ref.v_cache[row, slots], rtol=0, atol=0)


def test_pack_gqa_strided_q(fa3):
    """q, k and v as views into one fused projection (only the last dim contiguous), heads packed."""
    torch.manual_seed(10)
    b, sq, sk, h, h_k, d = 2, 50, 400, 12, 4, 128
    qkv = randn(b, sq, h + 2 * h_k, d, dtype=torch.bfloat16)
    q = qkv[:, :, :h]
    k, v = randn(b, sk, h_k, d, dtype=torch.bfloat16), randn(b, sk, h_k, d, dtype=torch.bfloat16)
    out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True, out=out, pack_gqa=True)
    check(fa3, "strided packed", got, lse, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_long(fa3, dtype, d, causal):
    torch.manual_seed(11)
    b, s, h, h_k = 1, 4224, 4, 2
    q, k, v = randn(b, s, h, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype)
    out = poisoned_like((b, s, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    check(fa3, "dense 4224", got, lse, q, k, v, causal=causal)


def check_with_sinks(fa3, name, dtype, shape, dims, causal, pack_gqa):
    """A dense call with one random sink per query head against the reference, O and LSE.
    shape: (batch, seqlen_q, seqlen_k, heads, kv heads); dims: (d, dv)."""
    (b, sq, sk, h, h_k), (d, dv) = shape, dims
    q, k, v = randn(b, sq, h, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype), randn(b, sk, h_k, dv, dtype=dtype)
    sinks = torch.randn(h, device="cuda", dtype=torch.float32) * 2
    out = poisoned_like((b, sq, h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, sinks=sinks, return_softmax_lse=True, out=out,
                                   pack_gqa=pack_gqa)
    check(fa3, name, got, lse, q, k, v, causal=causal, sinks=sinks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(96, 96), (128, 128), (192, 128)], ids=["d96", "d128", "d192-128"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_dense_more_tiles_than_sms(fa3, dtype, dims, causal, pack_gqa):
    """Several tiles per CTA of the persistent grid (512 tiles): on two-group tiles each tile's
    epilogue runs while the next tile's first Q K^T does, so every output row but a CTA's last
    tile's passes through that overlap; with sinks, whose LSE the deferred store writes."""
    torch.manual_seed(13)
    d, dv = dims
    check_with_sinks(fa3, "persistent", dtype, (4, 1000, 1000, 16, 4), (d, dv), causal, pack_gqa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("window", [(-1, 0), (-1, 40)], ids=["causal", "right-window"])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_tile_order_sections(fa3, dtype, d, window, pack_gqa):
    """Tiles whose key range ends at their rows (causal, or a right window alone) are drawn in
    sections of (head, batch) pairs whose K/V fit a share of L2, the longest tile of every pair of
    a section first. 5 batch rows x 12 heads (4 KV heads) over 1500 keys make several sections, the
    last with fewer pairs, at d 128 and 256 (49 / 24 pairs unpacked, 16 / 8 packed; 60 and 20 pairs
    in all) and one section at d 64."""
    torch.manual_seed(17)
    b, s, h, h_k = 5, 1500, 12, 4
    q, k, v = randn(b, s, h, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype)
    out = poisoned_like((b, s, h, d), dtype, "cuda")
    causal = window == (-1, 0)
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, window_size=window, return_softmax_lse=True, out=out,
                                   pack_gqa=pack_gqa)
    check(fa3, "sections", got, lse, q, k, v, causal=causal, window_size=window)


# (name, flash_attn kwargs, attention_ref kwargs, tolerance factor)
FEATURES = [
    ("window", dict(window_size=(37, 11)), dict(window_size=(37, 11)), 2.0),
    ("causal-window", dict(causal=True, window_size=(64, -1)), dict(causal=True, window_size=(64, -1)), 2.0),
    ("chunk", dict(attention_chunk=48), dict(attention_chunk=48), 2.0),
    ("causal-chunk", dict(causal=True, attention_chunk=96), dict(causal=True, attention_chunk=96), 2.0),
    ("softcap", dict(softcap=7.5), dict(softcap=7.5), 3.0),
    ("causal-softcap", dict(causal=True, softcap=2.0), dict(causal=True, softcap=2.0), 3.0),
    ("scale", dict(softmax_scale=0.3), dict(softmax_scale=0.3), 2.0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("feature", FEATURES, ids=[f[0] for f in FEATURES])
@pytest.mark.parametrize("seqlens", [(113, 203), (300, 128), (520, 520)])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_features(fa3, dtype, d, feature, seqlens, pack_gqa):
    name, kwargs, ref_kwargs, factor = feature
    torch.manual_seed(hash((str(dtype), d, name, seqlens, pack_gqa)) % 2**31)
    (sq, sk), b, h, h_k = seqlens, 2, 6, 2
    q, k, v = randn(b, sq, h, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, return_softmax_lse=True, out=out, pack_gqa=pack_gqa, **kwargs)
    check(fa3, name, got, lse, q, k, v, factor, **ref_kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(8, 8), (80, 8)])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_sinks(fa3, dtype, causal, heads, pack_gqa):
    """One sink per query head (packed rows of one tile carry different heads' sinks)."""
    torch.manual_seed(5)
    h, h_k = heads
    check_with_sinks(fa3, "sinks", dtype, (2, 200, 333, h, h_k), (64, 64), causal, pack_gqa)


def cu_seqlens(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")


# Zero-length and one-token sequences next to long ones (each batch has > 16 query rows somewhere).
VARLEN_BATCHES = [
    ([0, 1, 113, 239, 64, 1], [5, 1, 203, 0, 128, 300]),
    ([300, 7], [129, 7]),
    ([17, 1000, 1, 129], [1, 1000, 64, 2000]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(64, 64), (128, 128), (256, 256), (192, 128)], ids=["d64", "d128", "d256", "d192-128"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", VARLEN_BATCHES)
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_varlen(fa3, dtype, dims, causal, lengths, pack_gqa):
    torch.manual_seed(hash((str(dtype), dims, causal, str(lengths), pack_gqa)) % 2**31)
    (d, dv), (lq, lk), h, h_k = dims, lengths, 6, 2
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    q, k, v = randn(sum(lq), h, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype), randn(sum(lk), h_k, dv, dtype=dtype)
    out = poisoned_like((sum(lq), h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, return_softmax_lse=True, out=out, pack_gqa=pack_gqa
    )
    check(fa3, "varlen", got, lse, q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_varlen_seqused(fa3, dtype, causal, pack_gqa):
    torch.manual_seed(3)
    lq, lk, used_q, used_k = [200, 50, 300], [300, 90, 310], [150, 0, 300], [250, 90, 7]
    h, h_k, d = 4, 2, 128
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    sq_used = torch.tensor(used_q, dtype=torch.int32, device="cuda")
    sk_used = torch.tensor(used_k, dtype=torch.int32, device="cuda")
    q, k, v = randn(sum(lq), h, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype)
    out = poisoned_like((sum(lq), h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), seqused_q=sq_used, seqused_k=sk_used, causal=causal,
        return_softmax_lse=True, out=out, pack_gqa=pack_gqa,
    )
    check(fa3, "seqused", got, lse, q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
          seqused_q=sq_used, seqused_k=sk_used)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_varlen_many_sequences(fa3, causal, pack_gqa):
    """Hundreds of tiles per CTA of the persistent grid, mixing tiles with and without keys."""
    gen = torch.Generator().manual_seed(21)
    n = 400
    lq = torch.randint(0, 300, (n,), generator=gen).tolist()
    lk = [0 if i % 7 == 0 else x for i, x in enumerate(torch.randint(1, 400, (n,), generator=gen).tolist())]
    h, h_k, d, dtype = 4, 1, 128, torch.bfloat16
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    q, k, v = randn(sum(lq), h, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype)
    out = poisoned_like((sum(lq), h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, return_softmax_lse=True, out=out, pack_gqa=pack_gqa
    )
    check(fa3, "many", got, lse, q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def ints(values):
    return torch.tensor(values, dtype=torch.int32, device="cuda")


# Page sizes of single rows, smaller than a key block, not powers of two (gathered, or whole
# 16-row boxes), or spanning blocks.
PAGE_SIZES = [1, 4, 8, 12, 16, 24, 32, 48, 64, 256]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", PAIRS, ids=[f"d{d}-{dv}" for d, dv in PAIRS])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_paged_extend(fa3, dtype, dims, causal, page_size, pack_gqa):
    """An extend step as SGLang issues it: ragged queries over a shuffled page pool (keys gathered
    through the page table), with a one-query row and a row without keys; Q rows gathered too
    when packed."""
    torch.manual_seed(hash((str(dtype), dims, causal, page_size, pack_gqa)) % 2**31)
    (d, dv), h, h_k = dims, 6, 2
    lq, lk = [100, 1, 300, 17], [300, 5, 700, 0]
    k_cache, v_cache, table = paged_cache(lk, page_size, h_k, d, dv, dtype)
    cu_q, used_k = cu_seqlens(lq), ints(lk)
    q = randn(sum(lq), h, d, dtype=dtype)
    out = poisoned_like((sum(lq), h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k_cache, v_cache, cu_q, None, max(lq), max(lk), seqused_k=used_k, page_table=table, causal=causal,
        return_softmax_lse=True, out=out, pack_gqa=pack_gqa,
    )
    check(fa3, f"paged{page_size}", got, lse, q, k_cache, v_cache, causal=causal, cu_seqlens_q=cu_q,
          seqused_k=used_k, page_table=table)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("interleaved", [False, True])
def test_paged_append_with_rotary(fa3, page_size, interleaved):
    """Prefill-sized appends into a paged cache (rotary on k and q), then attention over it."""
    torch.manual_seed(page_size + interleaved)
    b, h, h_k, d, sq, dtype = 3, 8, 2, 128, 200, torch.bfloat16
    cache_lens = [0, 37, 300]
    k_cache, v_cache, table = paged_cache([n + sq for n in cache_lens], page_size, h_k, d, d, dtype)
    k0, v0 = k_cache.clone(), v_cache.clone()
    k_new, v_new = randn(b, sq, h_k, d, dtype=dtype), randn(b, sq, h_k, d, dtype=dtype)
    angles = torch.rand(1024, 32, device="cuda") * 6.28  # rotary_dim 64 of 128
    rotary = dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype), rotary_interleaved=interleaved)
    seqlens = ints(cache_lens)
    q = randn(b, sq, h, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, page_table=table, causal=True,
        return_softmax_lse=True, out=out, **rotary,
    )
    ref = check(fa3, "paged append", got, lse, q, k0, v0, seqused_k=seqlens, page_table=table, k_new=k_new,
                v_new=v_new, causal=True, **rotary)
    torch.testing.assert_close(k_cache, ref.k_cache, rtol=2**-7, atol=1e-3)
    torch.testing.assert_close(v_cache, ref.v_cache, rtol=0, atol=0)


@pytest.mark.parametrize("page_size", [1, 64])
def test_paged_ragged_extend_with_append(fa3, page_size):
    """Ragged new tokens (cu_seqlens_q, cu_seqlens_k_new) appended into a paged cache with rotary,
    then attended causally: the extend step of a server that appends through the kernel."""
    torch.manual_seed(41 + page_size)
    h, h_k, d, dtype = 8, 2, 128, torch.bfloat16
    cache_lens, new_lens = [0, 37, 300, 5], [200, 1, 150, 33]
    k_cache, v_cache, table = paged_cache([c + n for c, n in zip(cache_lens, new_lens)], page_size, h_k, d, d, dtype)
    k0, v0 = k_cache.clone(), v_cache.clone()
    cu_new = cu_seqlens(new_lens)
    q = randn(sum(new_lens), h, d, dtype=dtype)
    k_new, v_new = randn(sum(new_lens), h_k, d, dtype=dtype), randn(sum(new_lens), h_k, d, dtype=dtype)
    angles = torch.rand(1024, 32, device="cuda") * 6.28
    rotary = dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype), rotary_interleaved=False)
    seqlens = ints(cache_lens)
    out = poisoned_like((sum(new_lens), h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, page_table=table, cu_seqlens_q=cu_new,
        cu_seqlens_k_new=cu_new, max_seqlen_q=max(new_lens), causal=True, return_softmax_lse=True, out=out,
        **rotary,
    )
    ref = check(fa3, "ragged append", got, lse, q, k0, v0, seqused_k=seqlens, page_table=table, k_new=k_new,
                v_new=v_new, cu_seqlens_q=cu_new, cu_seqlens_k_new=cu_new, causal=True, **rotary)
    torch.testing.assert_close(k_cache, ref.k_cache, rtol=2**-7, atol=1e-3)
    torch.testing.assert_close(v_cache, ref.v_cache, rtol=0, atol=0)


@pytest.mark.parametrize("page_size", [0, 4, 16])
def test_cache_slots_past_the_keys_never_leak(fa3, page_size):
    """Cache slots past cache_seqlens hold NaN (as uninitialised memory may): they take no part
    in the result, in the key block that straddles the end nor in the unused rest of a page."""
    torch.manual_seed(31)
    b, sq, h, h_k, d, dtype = 3, 200, 8, 2, 128, torch.bfloat16
    lengths = [300, 77, 129]
    if page_size:
        k_cache, v_cache, table = paged_cache(lengths, page_size, h_k, d, d, dtype)
    else:
        k_cache, v_cache, table = randn(b, 512, h_k, d, dtype=dtype), randn(b, 512, h_k, d, dtype=dtype), None
    nan_past_the_keys(k_cache, v_cache, lengths, table)
    seqlens = ints(lengths)
    q = randn(b, sq, h, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=table,
                                           causal=True, return_softmax_lse=True, out=out)
    clean_k, clean_v = torch.nan_to_num(k_cache), torch.nan_to_num(v_cache)
    check(fa3, "past the keys", got, lse, q, clean_k, clean_v, seqused_k=seqlens, page_table=table, causal=True)


# Sequence lengths for the NaN-tail tests: partial last key blocks, grids of more tiles than SMs.
TAIL_LENGTHS, TAIL_HEADS, TAIL_SQ = [1000, 1537, 77, 2000], 16, 512
TAIL_DIMS = [(64, 64), (128, 128), (256, 256)]


@pytest.mark.parametrize("dims", TAIL_DIMS, ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_past_the_keys_many_tiles_cache(fa3, dims, causal):
    """Cache slots past each row's cache_seqlens hold NaN and its last key block is partial, in a
    grid of more tiles than SMs (each CTA zeroes many such tails in turn)."""
    torch.manual_seed(41)
    (d, dv), h, sq, dtype, lengths = dims, TAIL_HEADS, TAIL_SQ, torch.bfloat16, TAIL_LENGTHS
    k_cache, v_cache = randn(len(lengths), 2048, h, d, dtype=dtype), randn(len(lengths), 2048, h, dv, dtype=dtype)
    nan_past_the_keys(k_cache, v_cache, lengths)
    q = randn(len(lengths), sq, h, d, dtype=dtype)
    out = poisoned_like((len(lengths), sq, h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=ints(lengths), causal=causal,
                                           return_softmax_lse=True, out=out)
    check(fa3, "cache tails", got, lse, q, torch.nan_to_num(k_cache), torch.nan_to_num(v_cache),
          seqused_k=ints(lengths), causal=causal)


@pytest.mark.parametrize("dims", TAIL_DIMS, ids=["d64", "d128", "d256"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_past_the_keys_many_tiles_packed(fa3, dims, causal):
    """Packed varlen rows whose seqused_k stops short of their segment, the rest NaN, in a grid of
    more tiles than SMs; the last segment ends at the tensor's end, where TMA zero-fills instead."""
    torch.manual_seed(41)
    (d, dv), h, sq, dtype, lengths = dims, TAIL_HEADS, TAIL_SQ, torch.bfloat16, TAIL_LENGTHS
    segments = [n + 100 for n in lengths[:-1]] + [lengths[-1]]
    cu_q, cu_k = cu_seqlens([sq] * len(lengths)), cu_seqlens(segments)
    k, v = randn(sum(segments), h, d, dtype=dtype), randn(sum(segments), h, dv, dtype=dtype)
    for start, n, seg in zip(cu_k.tolist(), lengths, segments):
        k[start + n:start + seg] = float("nan")
        v[start + n:start + seg] = float("nan")
    q = randn(sq * len(lengths), h, d, dtype=dtype)
    out = poisoned_like((sq * len(lengths), h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, sq, max(segments), seqused_k=ints(lengths),
                                          causal=causal, return_softmax_lse=True, out=out)
    check(fa3, "packed tails", got, lse, q, torch.nan_to_num(k), torch.nan_to_num(v), cu_seqlens_q=cu_q,
          cu_seqlens_k=cu_k, seqused_k=ints(lengths), causal=causal)


def test_strided_views(fa3):
    """K and V as views into one fused buffer (the last dim contiguous, other strides free)."""
    torch.manual_seed(9)
    b, s, h, d = 2, 300, 4, 128
    q = randn(b, s, h, d, dtype=torch.bfloat16)
    kv = randn(b, s, 2, h, d, dtype=torch.bfloat16)
    k, v = kv[:, :, 0], kv[:, :, 1]
    out = poisoned_like((b, s, h, d), torch.bfloat16, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True, out=out)
    check(fa3, "strided", got, lse, q, k, v, causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_out_view_nothing_written_outside(fa3, causal):
    """out as a view into a larger poisoned buffer: the partial last row tile and the padding
    columns next to each row stay untouched (the stores are clipped to the view)."""
    torch.manual_seed(12)
    b, s, h, d = 2, 300, 3, 128
    q, k, v = (randn(b, s, h, d, dtype=torch.bfloat16) for _ in range(3))
    buf = poisoned_like((b, s + 100, h, d + 8), torch.bfloat16, "cuda")
    before = buf.clone()
    out = buf[:, :s, :, :d]
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    check(fa3, "out view", got, lse, q, k, v, causal=causal)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(buf[:, s:].view(torch.int16), before[:, s:].view(torch.int16))
    assert torch.equal(buf[..., d:].view(torch.int16), before[..., d:].view(torch.int16))


@pytest.mark.parametrize("heads", [(3, 3), (6, 2)])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_varlen_out_view_nothing_written_outside(fa3, heads, pack_gqa):
    """Packed rows into a view of a larger poisoned buffer: each sequence's rows hold its own
    result (no tile's store reaches into the next sequence) and nothing past the view changes."""
    torch.manual_seed(13)
    (h, h_k), lq, lk, d = heads, [200, 64, 1, 300, 129], [150, 300, 9, 300, 700], 128
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    q = randn(sum(lq), h, d, dtype=torch.bfloat16)
    k, v = randn(sum(lk), h_k, d, dtype=torch.bfloat16), randn(sum(lk), h_k, d, dtype=torch.bfloat16)
    buf = poisoned_like((sum(lq) + 100, h, d + 8), torch.bfloat16, "cuda")
    before = buf.clone()
    out = buf[: sum(lq), :, :d]
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), causal=True, return_softmax_lse=True, out=out, pack_gqa=pack_gqa
    )
    check(fa3, "varlen out view", got, lse, q, k, v, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    assert torch.equal(buf[sum(lq):].view(torch.int16), before[sum(lq):].view(torch.int16))
    assert torch.equal(buf[..., d:].view(torch.int16), before[..., d:].view(torch.int16))


def test_repeatable_bitwise(fa3):
    torch.manual_seed(1)
    q, k, v = (randn(2, 777, 4, 128, dtype=torch.bfloat16) for _ in range(3))
    first = fa3.flash_attn_func(q, k, v, causal=True)
    for _ in range(3):
        assert torch.equal(fa3.flash_attn_func(q, k, v, causal=True), first)


@pytest.mark.parametrize("sm_margin", [1, 100, 10_000])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_sm_margin_shrinks_the_grid_not_the_result(fa3, sm_margin, pack_gqa):
    """The persistent grid leaves sm_margin SMs free (down to one CTA); tiles are the same work."""
    torch.manual_seed(2)
    q = randn(2, 1000, 8, 128, dtype=torch.bfloat16)
    k, v = (randn(2, 1000, 2, 128, dtype=torch.bfloat16) for _ in range(2))
    full = fa3.flash_attn_func(q, k, v, causal=True, pack_gqa=pack_gqa)
    assert torch.equal(fa3.flash_attn_func(q, k, v, causal=True, sm_margin=sm_margin, pack_gqa=pack_gqa), full)


# Absorbed MLA (qv): d 64 -> dv 256 / 512, S = q k^T + qv v^T, on its own tile (64 rows shared by
# both consumer groups, each accumulating half of O's columns). (heads, seqlens, pack_gqa): a
# partial tile and one key, key counts that end inside a block, many tiles; DeepSeek's 128 heads
# on one KV head packed.
QV_CASES = [
    ((3, 3), (17, 1), False), ((4, 4), (113, 203), False), ((2, 1), (300, 128), False),
    ((2, 2), (1023, 1024), False), ((16, 1), (23, 333), True), ((128, 1), (3, 500), True),
    ((6, 2), (300, 217), True),
]


def mla_inputs(b, sq, sk, heads, dv, dtype):
    (h, h_k) = heads
    return (randn(b, sq, h, 64, dtype=dtype), randn(b, sq, h, dv, dtype=dtype), randn(b, sk, h_k, 64, dtype=dtype),
            randn(b, sk, h_k, dv, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", QV_CASES, ids=[f"h{h}-{hk}-s{sq}-{sk}-{'pack' if pk else 'heads'}"
                                                for (h, hk), (sq, sk), pk in QV_CASES])
def test_absorbed_mla(fa3, dtype, dv, causal, case):
    heads, (sq, sk), pack_gqa = case
    torch.manual_seed(hash((str(dtype), dv, causal, case)) % 2**31)
    q, qv, k, v = mla_inputs(2, sq, sk, heads, dv, dtype)
    out = poisoned_like((2, sq, heads[0], dv), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, qv=qv, causal=causal, return_softmax_lse=True, out=out,
                                   pack_gqa=pack_gqa)
    check(fa3, "qv", got, lse, q, k, v, qv=qv, causal=causal)


QV_FEATURES = [
    ("window", dict(window_size=(37, 11)), 2.0),
    ("causal-chunk", dict(causal=True, attention_chunk=96), 2.0),
    ("softcap", dict(causal=True, softcap=5.0), 3.0),
    ("sinks", dict(causal=True, sinks="per head"), 2.0),
    ("scale", dict(softmax_scale=0.05), 2.0),
]


@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("feature", QV_FEATURES, ids=[f[0] for f in QV_FEATURES])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_absorbed_mla_features(fa3, dv, feature, pack_gqa):
    name, kwargs, factor = feature
    torch.manual_seed(hash((dv, name, pack_gqa)) % 2**31)
    heads, sq, sk, dtype = (16, 2), 150, 333, torch.bfloat16
    q, qv, k, v = mla_inputs(2, sq, sk, heads, dv, dtype)
    if kwargs.get("sinks") == "per head":
        kwargs = dict(kwargs, sinks=torch.randn(heads[0], device="cuda") * 2)
    out = poisoned_like((2, sq, heads[0], dv), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, qv=qv, return_softmax_lse=True, out=out, pack_gqa=pack_gqa, **kwargs)
    check(fa3, name, got, lse, q, k, v, factor, qv=qv, **kwargs)


@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("pack_gqa", [False, True])
def test_absorbed_mla_varlen(fa3, dv, pack_gqa):
    """Packed sequences with empty and one-token ones; a sequence's last tile ends inside it."""
    torch.manual_seed(dv + pack_gqa)
    (lq, lk), h, h_k, dtype = VARLEN_BATCHES[0], 8, 1, torch.float16
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    q, qv = randn(sum(lq), h, 64, dtype=dtype), randn(sum(lq), h, dv, dtype=dtype)
    k, v = randn(sum(lk), h_k, 64, dtype=dtype), randn(sum(lk), h_k, dv, dtype=dtype)
    out = poisoned_like((sum(lq), h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), qv=qv, causal=True,
                                          return_softmax_lse=True, out=out, pack_gqa=pack_gqa)
    check(fa3, "qv varlen", got, lse, q, k, v, qv=qv, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("page_size", [0, 1, 12, 16, 64])
def test_absorbed_mla_cache(fa3, dv, page_size):
    """A multi-token step over an MLA cache (128 heads on one latent KV head, packed): dense or
    paged, with NaN in every slot past the keys (v takes part in the scores here too)."""
    torch.manual_seed(dv + page_size)
    b, sq, h, h_k, dtype = 3, 4, 128, 1, torch.bfloat16
    lengths = [300, 77, 129]
    if page_size:
        k_cache, v_cache, table = paged_cache(lengths, page_size, h_k, 64, dv, dtype)
    else:
        k_cache, v_cache, table = randn(b, 512, h_k, 64, dtype=dtype), randn(b, 512, h_k, dv, dtype=dtype), None
    nan_past_the_keys(k_cache, v_cache, lengths, table)
    seqlens = ints(lengths)
    q, qv = randn(b, sq, h, 64, dtype=dtype), randn(b, sq, h, dv, dtype=dtype)
    out = poisoned_like((b, sq, h, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table,
                                           causal=True, return_softmax_lse=True, out=out, pack_gqa=True)
    check(fa3, "qv cache", got, lse, q, torch.nan_to_num(k_cache), torch.nan_to_num(v_cache), qv=qv,
          seqused_k=seqlens, page_table=table, causal=True)


def mla_decode_inputs(dv, page_size, lengths, sq=1, h=128):
    """A decode step of an MLA cache: 128 heads packed on the latent KV head fill two 64-row tiles
    with one query; NaN in every cache slot past the keys."""
    b, dtype = len(lengths), torch.bfloat16
    if page_size:
        k_cache, v_cache, table = paged_cache(lengths, page_size, 1, 64, dv, dtype)
    else:
        k_cache, v_cache, table = randn(b, max(lengths) + 64, 1, 64, dtype=dtype), randn(
            b, max(lengths) + 64, 1, dv, dtype=dtype), None
    nan_past_the_keys(k_cache, v_cache, lengths, table)
    q, qv = randn(b, sq, h, 64, dtype=dtype), randn(b, sq, h, dv, dtype=dtype)
    return q, qv, k_cache, v_cache, table, ints(lengths)


@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("num_splits", [0, 3, 40])
@pytest.mark.parametrize("page_size", [0, 64])
def test_absorbed_mla_split_kv(fa3, dv, num_splits, page_size):
    """The absorbed-MLA tile splits the keys (heuristic or explicit count): each split writes fp32
    partials without the sinks, the combine merges them and adds the sinks; splits past a row's
    keys are empty."""
    torch.manual_seed(hash((dv, num_splits, page_size)) % 2**31)
    q, qv, k_cache, v_cache, table, seqlens = mla_decode_inputs(dv, page_size, [3000, 517, 1])
    sinks = torch.randn(q.shape[2], device="cuda") * 2
    out = poisoned_like((*q.shape[:3], dv), q.dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table,
                                           causal=True, sinks=sinks, num_splits=num_splits,
                                           return_softmax_lse=True, out=out)
    check(fa3, "qv split", got, lse, q, torch.nan_to_num(k_cache), torch.nan_to_num(v_cache), qv=qv,
          seqused_k=seqlens, page_table=table, causal=True, sinks=sinks)


def test_absorbed_mla_split_kv_plans(fa3):
    """A precomputed plan (counted in the portable tile's key blocks) carries over to the Hopper
    tile's blocks; deterministic=True repeats bit for bit and does not depend on the other rows."""
    torch.manual_seed(7)
    lengths = [9000, 300, 4100]
    q, qv, k_cache, v_cache, table, seqlens = mla_decode_inputs(512, 16, lengths)
    plan = fa3.get_scheduler_metadata(len(lengths), 1, max(lengths), 128, 1, 64, seqlens, headdim_v=512,
                                      page_size=16, causal=True)
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table,
                                           causal=True, scheduler_metadata=plan, return_softmax_lse=True)
    check(fa3, "qv metadata", got, lse, q, torch.nan_to_num(k_cache), torch.nan_to_num(v_cache), qv=qv,
          seqused_k=seqlens, page_table=table, causal=True)
    full = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table,
                                       causal=True, deterministic=True)
    assert torch.equal(full, fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens,
                                                         page_table=table, causal=True, deterministic=True))
    for row in range(len(lengths)):
        alone = fa3.flash_attn_with_kvcache(q[row : row + 1], k_cache, v_cache, qv=qv[row : row + 1],
                                            cache_seqlens=seqlens[row : row + 1], page_table=table[row : row + 1],
                                            causal=True, deterministic=True)
        assert torch.equal(alone, full[row : row + 1]), f"row {row} depends on the batch"


def test_sm90_request_refuses_what_it_cannot_run(fa3):
    q = randn(1, 1, 4, 128, dtype=torch.bfloat16)
    k = randn(1, 64, 4, 128, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="SGL_FLASH_ATTN3_BACKEND=sm90 cannot run this call: a decode"):
        fa3.flash_attn_func(q, k, k)
