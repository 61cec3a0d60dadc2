"""KV-cache features against attention_ref: paged KV, in-place append with rotary, head-dim
pairs and qv, split-KV, GQA packing, determinism, scheduler metadata and CUDA graphs."""

from __future__ import annotations

import itertools

import pytest
import torch
from caches import nan_past_the_keys, paged_cache
from tolerance import check_against_ref, poisoned_like

pytestmark = pytest.mark.gpu

DTYPES = [torch.float16, torch.bfloat16]
ULP = {torch.float16: 2**-10, torch.bfloat16: 2**-7}


def randn(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, dtype=dtype, device="cuda")


def ints(values):
    return torch.tensor(values, dtype=torch.int32, device="cuda")


def cu_seqlens(lengths):
    return ints([0, *itertools.accumulate(lengths)])


def check(fa3, name, out, lse, q, k, v, factor=2.0, **ref_kwargs):
    return check_against_ref(fa3, name, out, lse, ref_kwargs, q, k, v, factor)


def kernel_launches(fn, name_part: str) -> int:
    """How many GPU kernels whose name contains name_part one call of fn launches."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.count for event in prof.key_averages() if name_part in event.key)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 4, 16, 64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq", [1, 5, 130])
def test_paged_decode_and_chunk(fa3, dtype, page_size, causal, sq):
    torch.manual_seed(page_size * 7 + sq)
    lengths = [sq + 3, 700, sq + 190, 1]
    b, h, h_k, d = len(lengths), 8, 2, 128
    k_cache, v_cache, table = paged_cache(lengths, page_size, h_k, d, d, dtype)
    seqlens = ints(lengths)
    q = randn(b, sq, h, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens, page_table=table, causal=causal, return_softmax_lse=True, out=out
    )
    check(fa3, f"paged{page_size}", got, lse, q, k_cache, v_cache, seqused_k=seqlens, page_table=table, causal=causal)


@pytest.mark.parametrize("page_size", [1, 7, 16, 48])
@pytest.mark.parametrize("num_splits", [2, 9, 40])
def test_paged_splits_of_few_blocks(fa3, page_size, num_splits):
    """Splits of one to a few key blocks over pages that need not divide a key block: each row's
    page-table entry is read ahead of its block, and no split reads past its own blocks."""
    torch.manual_seed(page_size * 101 + num_splits)
    lengths = [900, 130, 1]
    b, h, h_k, d = len(lengths), 8, 2, 128
    k_cache, v_cache, table = paged_cache(lengths, page_size, h_k, d, d, torch.bfloat16)
    nan_past_the_keys(k_cache, v_cache, lengths, table)
    seqlens = ints(lengths)
    q = randn(b, 1, h, d)
    out = poisoned_like((b, 1, h, d), torch.bfloat16, "cuda")
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=table, causal=True,
                                           num_splits=num_splits, return_softmax_lse=True, out=out)
    check(fa3, f"paged{page_size}-splits{num_splits}", got, lse, q, torch.nan_to_num(k_cache),
          torch.nan_to_num(v_cache), seqused_k=seqlens, page_table=table, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_with_page_table(fa3, dtype):
    """A page table in flash_attn_varlen_func is honoured (never silently dropped)."""
    torch.manual_seed(1)
    lq, lk = [3, 0, 70], [40, 9, 333]
    k_cache, v_cache, table = paged_cache(lk, 16, 2, 64, 64, dtype)
    cu_q = cu_seqlens(lq)
    q = randn(sum(lq), 4, 64, dtype=dtype)
    got, lse = fa3.flash_attn_varlen_func(
        q, k_cache, v_cache, cu_q, None, max(lq), max(lk), seqused_k=ints(lk), page_table=table, causal=True,
        return_softmax_lse=True,
    )
    check(fa3, "varlen paged", got, lse, q, k_cache, v_cache, cu_seqlens_q=cu_q, seqused_k=ints(lk),
          page_table=table, causal=True)


@pytest.mark.parametrize("num_splits", [1, 3, 0])
@pytest.mark.parametrize("dims", [(128, 128), (64, 512)], ids=["d128", "mla-dv512"])
def test_padded_packed_q_rows_are_left_untouched(fa3, dims, num_splits):
    """Packed q rows past cu_seqlens_q[-1] (a batch padded for CUDA-graph replay) belong to no
    sequence: out keeps what it held there, split or not, and the rows of the sequences are right."""
    torch.manual_seed(hash((dims, num_splits)) % 2**31)
    d, dv = dims
    absorbed_mla = dv > d
    lq, lk, padding = [5, 1, 33], [300, 1, 900], 7
    h, h_k, rows = 8, 1 if absorbed_mla else 2, sum(lq)
    k_cache, v_cache, table = paged_cache(lk, 16, h_k, d, dv, torch.bfloat16)
    q = randn(rows + padding, h, d)
    qv = randn(rows + padding, h, dv) if absorbed_mla else None
    out = poisoned_like((rows + padding, h, dv), torch.bfloat16, "cuda")
    out[rows:] = 3.0
    cu_q, seqlens = cu_seqlens(lq), ints(lk)
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table, cu_seqlens_q=cu_q, max_seqlen_q=max(lq),
        causal=True, num_splits=num_splits, return_softmax_lse=True, out=out,
    )
    assert torch.equal(out[rows:], torch.full_like(out[rows:], 3.0)), "a padding row was written"
    check(fa3, "padded q", got[:rows], lse[:, :rows], q[:rows], k_cache, v_cache,
          qv=None if qv is None else qv[:rows], cu_seqlens_q=cu_q, seqused_k=seqlens, page_table=table, causal=True)


APPEND_CASES = [
    dict(),
    dict(rotary=True, interleaved=True),
    dict(rotary=True, interleaved=False, causal=True),
    dict(rotary=True, interleaved=False, rotary_seqlens=True),
    dict(ragged=True, causal=True),
    dict(ragged=True, rotary=True, interleaved=True, causal=True),
    dict(paged=16, rotary=True, interleaved=False, causal=True),
    dict(paged=1, ragged=True, causal=True),
    dict(batch_idx=True, rotary=True, interleaved=True),
    dict(leftpad=True, causal=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", APPEND_CASES, ids=[str(c) for c in APPEND_CASES])
def test_append_kv(fa3, dtype, case):
    torch.manual_seed(hash(str(case)) % 2**31)
    b, h, h_k, d, sq, capacity = 3, 8, 2, 128, 4, 512
    cache_lens = [0, 37, 300]
    new_lens = [4, 1, 3] if case.get("ragged") else [4, 4, 4]
    if case.get("paged"):
        k_cache, v_cache, table = paged_cache([n + 8 for n in cache_lens], case["paged"], h_k, d, d, dtype)
        cache_rows = None
    else:
        rows = 5 if case.get("batch_idx") else b
        k_cache, v_cache, table = randn(rows, capacity, h_k, d, dtype=dtype), randn(rows, capacity, h_k, d, dtype=dtype), None
        cache_rows = ints([4, 0, 2]) if case.get("batch_idx") else None
    k0, v0 = k_cache.clone(), v_cache.clone()
    if case.get("ragged"):
        cu_new = cu_seqlens(new_lens)
        k_new, v_new = randn(sum(new_lens), h_k, d, dtype=dtype), randn(sum(new_lens), h_k, d, dtype=dtype)
    else:
        cu_new = None
        k_new, v_new = randn(b, new_lens[0], h_k, d, dtype=dtype), randn(b, new_lens[0], h_k, d, dtype=dtype)
    rotary = {}
    if case.get("rotary"):
        angles = torch.rand(1024, 32, device="cuda") * 6.28  # rotary_dim 64 of 128
        rotary = dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype),
                      rotary_interleaved=case["interleaved"])
        if case.get("rotary_seqlens"):
            rotary["rotary_seqlens"] = ints([5, 100, 2])
    leftpad = ints([0, 10, 299]) if case.get("leftpad") else None
    seqlens = ints(cache_lens)
    causal = case.get("causal", False)
    q = randn(b, sq, h, d, dtype=dtype)
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, cache_batch_idx=cache_rows, cache_leftpad=leftpad,
        page_table=table, cu_seqlens_k_new=cu_new, causal=causal, return_softmax_lse=True, **rotary,
    )
    ref = check(
        fa3, "append", got, lse, q, k0, v0, seqused_k=seqlens, page_table=table, k_new=k_new, v_new=v_new,
        cu_seqlens_k_new=cu_new, cache_batch_idx=cache_rows, cache_leftpad=leftpad, causal=causal, **rotary,
    )
    # Appended slots hold the (rotated) inputs; nothing else in the cache changed.
    tol = dict(rtol=ULP[dtype], atol=1e-3) if rotary else dict(rtol=0, atol=0)
    torch.testing.assert_close(k_cache, ref.k_cache, **tol)
    torch.testing.assert_close(v_cache, ref.v_cache, rtol=0, atol=0)
    changed = (k_cache != k0).any(-1).any(-1) | (v_cache != v0).any(-1).any(-1)
    assert int(changed.sum()) <= sum(new_lens)


@pytest.mark.parametrize("sq", [1, 200])
@pytest.mark.parametrize("page_size", [0, 16, 64, 128])
def test_portable_cache_slots_past_the_keys_never_leak(fa3, monkeypatch, sq, page_size):
    """The portable family on a cache whose slots past cache_seqlens hold NaN: they take no part
    (pages of 64 and 128 hold whole key blocks, which load as strided rows)."""
    monkeypatch.setenv("SGL_FLASH_ATTN3_BACKEND", "portable")
    torch.manual_seed(sq + page_size)
    b, h, h_k, d = 3, 8, 2, 128
    lengths = [300, 77, 129]
    if page_size:
        k_cache, v_cache, table = paged_cache(lengths, page_size, h_k, d, d, torch.bfloat16)
    else:
        k_cache, v_cache, table = randn(b, 512, h_k, d), randn(b, 512, h_k, d), None
    nan_past_the_keys(k_cache, v_cache, lengths, table)
    seqlens, q = ints(lengths), randn(b, sq, h, d)
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, page_table=table,
                                           causal=True, return_softmax_lse=True)
    check(fa3, "portable past the keys", got, lse, q, torch.nan_to_num(k_cache), torch.nan_to_num(v_cache),
          seqused_k=seqlens, page_table=table, causal=True)


HEAD_DIM_PAIRS = [(96, 96), (192, 192), (256, 256), (192, 128)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", HEAD_DIM_PAIRS, ids=[f"{d}-{dv}" for d, dv in HEAD_DIM_PAIRS])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 1), (239, 1), (113, 203), (128, 217), (300, 128), (1023, 1024)])
def test_head_dim_pairs(fa3, dtype, dims, causal, seqlens):
    torch.manual_seed(hash((dims, causal, seqlens)) % 2**31)
    (d, dv), (sq, sk) = dims, seqlens
    q, k, v = randn(2, sq, 6, d, dtype=dtype), randn(2, sk, 2, d, dtype=dtype), randn(2, sk, 2, dv, dtype=dtype)
    out = poisoned_like((2, sq, 6, dv), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    check(fa3, f"d{d}-{dv}", got, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 777), (16, 300), (130, 130)])
def test_absorbed_mla_qv(fa3, dtype, dv, sq, sk):
    """DeepSeek-style absorbed MLA: d 64 (rope part), dv 256/512 latent, q heads share one kv head."""
    torch.manual_seed(dv + sq * 3 + sk)
    b, h = 2, 16
    q, qv = randn(b, sq, h, 64, dtype=dtype), randn(b, sq, h, dv, dtype=dtype)
    kv = randn(b, sk, 1, 64 + dv, dtype=dtype)  # SGLang passes K and V as strided views of one buffer
    k, v = kv[..., :64], kv[..., 64:]
    seqlens = ints([sk, max(sk - 3, 1)])
    got, lse = fa3.flash_attn_with_kvcache(q, k, v, qv=qv, cache_seqlens=seqlens, causal=True, return_softmax_lse=True)
    check(fa3, "qv", got, lse, q, k, v, qv=qv, seqused_k=seqlens, causal=True)


@pytest.mark.parametrize("num_splits", [0, 1, 2, 7, 64])
@pytest.mark.parametrize("pack_gqa", [None, False, True])
@pytest.mark.parametrize("features", [dict(), dict(causal=True, sinks=True), dict(window_size=(300, 0), softcap=20.0)])
def test_splits_and_gqa_packing(fa3, num_splits, pack_gqa, features):
    torch.manual_seed(num_splits * 3 + (pack_gqa is True))
    b, sq, h, h_k, d = 3, 2, 16, 4, 128
    lengths = [1, 2048, 777]
    k_cache, v_cache = randn(b, 2048, h_k, d), randn(b, 2048, h_k, d)
    kwargs = dict(features)
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.randn(h, device="cuda")
    q = randn(b, sq, h, d)
    seqlens = ints(lengths)
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens, num_splits=num_splits, pack_gqa=pack_gqa,
        return_softmax_lse=True, **kwargs,
    )
    factor = 3.0 if kwargs.get("softcap") else 2.0
    check(fa3, "splits", got, lse, q, k_cache, v_cache, factor=factor, seqused_k=seqlens, **kwargs)


def test_deterministic_is_batch_invariant(fa3):
    """deterministic=True: bitwise repeatable, and a row's result does not depend on its neighbours.
    Alone, each row runs on a cache as long as its keys, so the split count changes with the
    company a row keeps (9 splits together; 4, 1, 9 and 2 alone)."""
    torch.manual_seed(23)
    h, h_k, d = 16, 4, 128
    k_cache, v_cache = randn(4, 17000, h_k, d), randn(4, 17000, h_k, d)
    q = randn(4, 1, h, d)
    lengths = [8191, 12, 17000, 4000]
    seqlens = ints(lengths)
    full = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True, deterministic=True)
    again = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True, deterministic=True)
    assert torch.equal(full, again)
    for row, length in enumerate(lengths):
        alone = fa3.flash_attn_with_kvcache(
            q[row : row + 1], k_cache[row : row + 1, :length], v_cache[row : row + 1, :length],
            cache_seqlens=seqlens[row : row + 1], causal=True, deterministic=True,
        )
        assert torch.equal(alone, full[row : row + 1]), f"row {row} depends on the batch"


def test_scheduler_metadata_reuse(fa3):
    torch.manual_seed(29)
    b, h, h_k, d, sk = 4, 32, 8, 128, 8192
    k_cache, v_cache = randn(b, sk, h_k, d), randn(b, sk, h_k, d)
    q = randn(b, 1, h, d)
    seqlens = ints([sk, 100, 5000, 1])
    plan = fa3.get_scheduler_metadata(b, 1, sk, h, h_k, d, seqlens, causal=True)
    assert int(plan[1]) > 1, "a 4-row decode should be split to fill the GPU"
    with_plan = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                            scheduler_metadata=plan)
    without = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True)
    assert torch.equal(with_plan, without)


def test_decode_step_in_cuda_graph(fa3):
    """Append + rotary + paged split decode, captured once and replayed with new inputs."""
    torch.manual_seed(31)
    b, h, h_k, d = 4, 16, 4, 128
    k_cache, v_cache, table = paged_cache([4000, 10, 2500, 64], 16, h_k, d, d, torch.bfloat16)
    seqlens = ints([3990, 5, 2400, 60])
    angles = torch.rand(8192, 32, device="cuda")
    cos, sin = angles.cos(), angles.sin()
    q, k_new, v_new = randn(b, 1, h, d), randn(b, 1, h_k, d), randn(b, 1, h_k, d)
    out = torch.empty_like(q)

    def step():
        # Positional, the way SGLang calls it: (q, k_cache, v_cache, k, v, qv, rotary_cos, rotary_sin, cache_seqlens)
        fa3.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, None, cos, sin, seqlens, page_table=table,
                                    causal=True, out=out)

    k0, v0 = k_cache.clone(), v_cache.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        k_cache.copy_(k0), v_cache.copy_(v0)
        graph.replay()
        torch.cuda.synchronize()
        got = out.clone()
        k_cache.copy_(k0), v_cache.copy_(v0)
        step()
        assert torch.equal(got, out)


def test_chained_split_decode_in_cuda_graph(fa3):
    """Split decode calls captured back to back, each call's q the previous call's output. On Hopper
    a call's forward starts while the previous call's split merge drains (programmatic dependent
    launch) and must still read the q that merge writes: every output is poisoned before the
    replay and checked against the reference on the q it was given."""
    torch.manual_seed(37)
    b, h, h_k, d, sk, calls = 2, 8, 2, 128, 3000, 4
    k_cache, v_cache = randn(b, sk, h_k, d), randn(b, sk, h_k, d)
    seqlens = ints([sk, 1700])
    qs = [randn(b, 1, h, d)] + [torch.empty(b, 1, h, d, dtype=torch.bfloat16, device="cuda") for _ in range(calls)]
    lses = []

    def chain():
        lses.clear()
        for i in range(calls):
            _, lse = fa3.flash_attn_with_kvcache(qs[i], k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                                 num_splits=4, return_softmax_lse=True, out=qs[i + 1])
            lses.append(lse)

    chain()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    for out in qs[1:]:
        out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for i in range(calls):
        check(fa3, f"chained call {i}", qs[i + 1], lses[i], qs[i], k_cache, v_cache, seqused_k=seqlens, causal=True)


# (queries per sequence, query heads): 4 or 16 rows per KV head fill the 16-row decode tile,
# 48 rows the short-query tile.
SPLIT_TILES = [(1, 16), (4, 16), (12, 16)]


@pytest.mark.parametrize("sq,h", SPLIT_TILES, ids=[f"sq{sq}-h{h}" for sq, h in SPLIT_TILES])
def test_split_merge_counters_are_left_at_zero(fa3, sq, h):
    """The last split CTA of each tile merges the tile's splits (up to 8; more go to the combine
    kernel), counting arrivals on a counter that every call must leave at zero. Calls on the same
    shapes with a changing split count (so the counters see a new limit each time), concurrent calls
    on two streams, and replays of a captured graph between eager calls all match the reference,
    with every output poisoned first."""
    torch.manual_seed(41 + sq)
    b, h_k, d = 3, 4, 128
    k_cache, v_cache = randn(b, 4096, h_k, d), randn(b, 4096, h_k, d)
    seqlens = ints([4096, 1500, 77])

    def call(q, num_splits, out):
        _, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                             num_splits=num_splits, return_softmax_lse=True, out=out)
        return lse

    def verify(name, q, out, lse):
        check(fa3, name, out, lse, q, k_cache, v_cache, seqused_k=seqlens, causal=True)

    q = randn(b, sq, h, d)
    for num_splits in [3, 8, 2, 64, 5, 1, 0]:
        out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
        verify(f"eager, {num_splits} splits", q, out, call(q, num_splits, out))
    for num_splits, combine_grids in [(8, 0), (64, 1)]:  # the combine kernel only past 8 splits
        out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
        assert kernel_launches(lambda: call(q, num_splits, out), "split_combine") == combine_grids

    side = torch.cuda.Stream()
    qa, qb = randn(b, sq, h, d), randn(b, sq, h, d)
    outs = {}
    torch.cuda.synchronize()
    for i in range(6):  # launched back to back: the two streams' calls overlap
        for stream, qx in [(torch.cuda.current_stream(), qa), (side, qb)]:
            with torch.cuda.stream(stream):
                out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
                outs[(i, stream.stream_id)] = (qx, out, call(qx, 4 + i % 3, out))
    torch.cuda.synchronize()
    for (i, _), (qx, out, lse) in outs.items():
        verify(f"two streams, call {i}", qx, out, lse)

    q_graph = randn(b, sq, h, d)
    out_graph = torch.empty(b, sq, h, d, dtype=torch.bfloat16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lse_graph = call(q_graph, 6, out_graph)
    for i in range(3):
        q_graph.copy_(torch.randn_like(q_graph))
        out_graph.fill_(float("nan"))
        graph.replay()
        out = poisoned_like((b, sq, h, d), torch.bfloat16, "cuda")
        lse = call(q, 7, out)
        torch.cuda.synchronize()
        verify(f"graph replay {i}", q_graph, out_graph, lse_graph)
        verify(f"eager after replay {i}", q, out, lse)


ALL_PAIRS = [(64, 64), (96, 96), (128, 128), (192, 192), (256, 256), (192, 128), (64, 256), (64, 512)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", ALL_PAIRS, ids=[f"{d}-{dv}" for d, dv in ALL_PAIRS])
@pytest.mark.parametrize("num_splits", [1, 3, 0])
@pytest.mark.parametrize("sq", [1, 7, 40])
def test_every_head_dim_pair_on_a_paged_cache(fa3, dtype, dims, num_splits, sq):
    """Each (d, dv) instantiation, decode (sq 1), short-query (sq 7: 28 packed rows) and prefill tiles,
    split or not, through a page table."""
    torch.manual_seed(hash((dims, num_splits, sq)) % 2**31)
    d, dv = dims
    absorbed_mla = d == 64 and dv >= 256  # one latent kv head shared by every query head
    b, h, h_k = 2, 8, 1 if absorbed_mla else 2
    lengths = [sq + 400, sq + 5]
    k_cache, v_cache, table = paged_cache(lengths, 16, h_k, d, dv, dtype)
    qv = randn(b, sq, h, dv, dtype=dtype) if absorbed_mla else None
    q = randn(b, sq, h, d, dtype=dtype)
    seqlens = ints(lengths)
    got, lse = fa3.flash_attn_with_kvcache(q, k_cache, v_cache, qv=qv, cache_seqlens=seqlens, page_table=table,
                                           causal=True, num_splits=num_splits, return_softmax_lse=True)
    check(fa3, f"d{d}-{dv}", got, lse, q, k_cache, v_cache, qv=qv, seqused_k=seqlens, page_table=table, causal=True)
