"""The kernels against attention_ref on the awkward grid: O and LSE, outputs poisoned first."""

from __future__ import annotations

import itertools

import pytest
import torch
from direct_op import fwd_args
from tolerance import check_against_ref, poisoned_like

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, params=["auto", "portable"])
def backend(request, monkeypatch):
    """Every test runs on the automatic choice (the Hopper family for prefill on sm90) and on the
    portable family forced."""
    monkeypatch.setenv("SGL_FLASH_ATTN3_BACKEND", request.param)
    return request.param

DTYPES = [torch.float16, torch.bfloat16]
HEAD_DIMS = [64, 128]
# (heads_q, heads_kv): MHA, GQA, MQA with odd head counts.
HEADS = [(3, 3), (6, 2), (5, 1)]
# (seqlen_q, seqlen_k), including sq > sk and single tokens.
SEQLENS = [(1, 1), (239, 1), (113, 203), (128, 217), (300, 128), (1023, 1024)]


def randn(*shape, dtype, device="cuda"):
    return torch.randn(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("seqlens", SEQLENS)
def test_dense(fa3, dtype, d, causal, heads, seqlens):
    torch.manual_seed(hash((str(dtype), d, causal, heads, seqlens)) % 2**31)
    (h, h_k), (sq, sk) = heads, seqlens
    b = 2
    q, k, v = randn(b, sq, h, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert lse.shape == (b, h, sq) and lse.dtype == torch.float32
    check_against_ref(fa3, "dense", got, lse, dict(causal=causal), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_long(fa3, dtype, d, causal):
    torch.manual_seed(7)
    b, s, h, h_k = 1, 4224, 2, 1
    q, k, v = randn(b, s, h, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype), randn(b, s, h_k, d, dtype=dtype)
    out = poisoned_like((b, s, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, causal=causal, return_softmax_lse=True, out=out)
    check_against_ref(fa3, "dense 4224", got, lse, dict(causal=causal), q, k, v)


def cu_seqlens(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")


# Zero-length and one-token sequences next to long ones.
VARLEN_BATCHES = [
    ([0, 1, 113, 239, 64, 1], [5, 1, 203, 0, 128, 300]),
    ([1, 1, 1, 1], [1, 17, 1000, 64]),
    ([300, 7], [129, 7]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("lengths", VARLEN_BATCHES)
def test_varlen(fa3, dtype, d, causal, heads, lengths):
    torch.manual_seed(hash((str(dtype), d, causal, heads, str(lengths))) % 2**31)
    (h, h_k), (lq, lk) = heads, lengths
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    q = randn(sum(lq), h, d, dtype=dtype)
    k, v = randn(sum(lk), h_k, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype)
    out = poisoned_like((sum(lq), h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, return_softmax_lse=True, out=out
    )
    assert lse.shape == (h, sum(lq))
    check_against_ref(fa3, "varlen", got, lse, dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_seqused(fa3, dtype, causal):
    torch.manual_seed(11)
    lq, lk, used_q, used_k = [40, 9, 130], [70, 200, 33], [40, 0, 77], [12, 200, 0]
    cu_q, cu_k = cu_seqlens(lq), cu_seqlens(lk)
    sq_used = torch.tensor(used_q, dtype=torch.int32, device="cuda")
    sk_used = torch.tensor(used_k, dtype=torch.int32, device="cuda")
    h, h_k, d = 4, 2, 128
    q = randn(sum(lq), h, d, dtype=dtype)
    k, v = randn(sum(lk), h_k, d, dtype=dtype), randn(sum(lk), h_k, d, dtype=dtype)
    out = poisoned_like((sum(lq), h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lq), max(lk), seqused_q=sq_used, seqused_k=sk_used, causal=causal,
        return_softmax_lse=True, out=out,
    )
    check_against_ref(
        fa3, "seqused", got, lse,
        dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, seqused_q=sq_used, seqused_k=sk_used, causal=causal), q, k, v,
    )


# Masking, softcap and sinks: one policy in the kernel, the formulas in the reference.
FEATURES = [
    dict(window_size=(37, 0)),
    dict(window_size=(100, 20)),
    dict(window_size=(-1, 5)),
    dict(causal=True, window_size=(63, 63)),  # transformers' symmetric sliding window
    dict(attention_chunk=64),
    dict(causal=True, attention_chunk=48),
    dict(softcap=30.0),
    dict(softcap=5.0, causal=True),
    dict(sinks=True),
    dict(sinks=True, causal=True, window_size=(20, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("feature", FEATURES, ids=[str(f) for f in FEATURES])
@pytest.mark.parametrize("seqlens", [(113, 203), (239, 1), (300, 128)])
def test_features(fa3, dtype, d, feature, seqlens):
    torch.manual_seed(hash((str(dtype), d, str(feature), seqlens)) % 2**31)
    (sq, sk), b, h, h_k = seqlens, 2, 6, 2
    kwargs = dict(feature)
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.randn(h, device="cuda", dtype=torch.bfloat16) * 2
    q, k, v = randn(b, sq, h, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype), randn(b, sk, h_k, d, dtype=dtype)
    out = poisoned_like((b, sq, h, d), dtype, "cuda")
    got, lse = fa3.flash_attn_func(q, k, v, return_softmax_lse=True, out=out, **kwargs)
    factor = 3.0 if kwargs.get("softcap") else 2.0
    check_against_ref(fa3, str(feature), got, lse, kwargs, q, k, v, factor)


def test_many_heads_with_sinks_as_s_aux(fa3):
    torch.manual_seed(3)
    b, sq, sk, h, h_k, d = 1, 65, 130, 80, 8, 64
    q, k, v = (randn(b, sq, h, d, dtype=torch.bfloat16), randn(b, sk, h_k, d, dtype=torch.bfloat16),
               randn(b, sk, h_k, d, dtype=torch.bfloat16))
    s_aux = torch.randn(h, device="cuda", dtype=torch.float32)
    got, lse = fa3.flash_attn_func(q, k, v, causal=True, s_aux=s_aux, return_softmax_lse=True)
    check_against_ref(fa3, "s_aux", got, lse, dict(causal=True, sinks=s_aux), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_kvcache_unpaged(fa3, dtype, causal):
    """cache_seqlens, cache_batch_idx and cache_leftpad on a dense cache, q packed or batched."""
    torch.manual_seed(5)
    b, b_cache, s_cache, h, h_k, d, sq = 3, 5, 400, 8, 2, 128, 4
    k_cache = randn(b_cache, s_cache, h_k, d, dtype=dtype)
    v_cache = randn(b_cache, s_cache, h_k, d, dtype=dtype)
    seqlens = torch.tensor([1, 399, 250], dtype=torch.int32, device="cuda")
    batch_idx = torch.tensor([4, 0, 2], dtype=torch.int32, device="cuda")
    leftpad = torch.tensor([0, 17, 250], dtype=torch.int32, device="cuda")
    q = randn(b, sq, h, d, dtype=dtype)
    got, lse = fa3.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens, cache_batch_idx=batch_idx, cache_leftpad=leftpad,
        causal=causal, return_softmax_lse=True,
    )
    ref_kwargs = dict(seqused_k=seqlens, cache_batch_idx=batch_idx, cache_leftpad=leftpad, causal=causal)
    check_against_ref(fa3, "kvcache", got, lse, ref_kwargs, q, k_cache, v_cache)

    # The same decode step with packed q and an int cache_seqlens.
    cu_q = cu_seqlens([sq] * b)
    q_packed = q.reshape(b * sq, h, d)
    got, lse = fa3.flash_attn_with_kvcache(
        q_packed, k_cache[:b], v_cache[:b], cache_seqlens=300, cu_seqlens_q=cu_q, max_seqlen_q=sq,
        causal=causal, return_softmax_lse=True,
    )
    full = torch.full((b,), 300, dtype=torch.int32, device="cuda")
    check_against_ref(
        fa3, "kvcache packed", got, lse, dict(cu_seqlens_q=cu_q, seqused_k=full, causal=causal),
        q_packed, k_cache[:b], v_cache[:b],
    )


def test_strided_views(fa3):
    """Only the last dim must be contiguous: q/k/v as views of one fused buffer."""
    torch.manual_seed(9)
    b, s, h, d = 2, 150, 4, 64
    qkv = randn(b, s, 3 * h + 8, d, dtype=torch.bfloat16)
    q, k, v = qkv[:, :, :h], qkv[:, :, h : 2 * h], qkv[:, :, 2 * h : 3 * h]
    got, lse = fa3.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
    check_against_ref(fa3, "strided", got, lse, dict(causal=True), q, k, v)


def test_repeatable_bitwise(fa3):
    torch.manual_seed(13)
    q, k, v = (randn(4, 333, 8, 128, dtype=torch.bfloat16) for _ in range(3))
    first = fa3.flash_attn_func(q, k, v, causal=True)
    for _ in range(3):
        assert torch.equal(fa3.flash_attn_func(q, k, v, causal=True), first)


def test_empty_batch(fa3):
    q = randn(0, 16, 4, 64, dtype=torch.float16)
    out, lse = fa3.flash_attn_func(q, q, q, return_softmax_lse=True)
    assert out.shape == (0, 16, 4, 64) and lse.shape == (0, 4, 16)


def test_torch_compile_fullgraph(fa3):
    torch.manual_seed(17)
    q, k, v = (randn(2, 130, 4, 64, dtype=torch.bfloat16) for _ in range(3))

    def f(q, k, v):
        out, lse = fa3.flash_attn_func(q, k, v, causal=True, return_softmax_lse=True)
        return out * 2, lse

    compiled = torch.compile(f, fullgraph=True)
    out, lse = compiled(q, k, v)
    want, want_lse = f(q, k, v)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)


def test_cuda_graph_capture(fa3):
    torch.manual_seed(19)
    q, k, v = (randn(2, 64, 4, 128, dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    fa3.flash_attn_func(q, k, v, out=out)  # warm up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fa3.flash_attn_func(q, k, v, out=out)
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fa3.flash_attn_func(q, k, v))


def test_op_guards_memory_safety_when_called_directly(fa3):
    """Without the Python checks, the op still refuses what would read or write out of bounds."""
    fwd = fa3._ops.ops.fwd
    q = randn(1, 64, 2, 64, dtype=torch.bfloat16)
    lse = torch.empty(1, 2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="out must have the shape of q"):
        fwd(*fwd_args(q, q, q, torch.empty(1, 32, 2, 64, device="cuda", dtype=torch.bfloat16), lse))
    with pytest.raises(RuntimeError, match="softmax_lse must be"):
        fwd(*fwd_args(q, q, q, torch.empty_like(q), torch.empty(1, 2, 63, device="cuda")))
    misaligned = torch.empty(1, 64, 2, 68, device="cuda", dtype=torch.bfloat16)[..., 2:66]
    with pytest.raises(RuntimeError, match="16-byte aligned|multiple of"):
        fwd(*fwd_args(misaligned, q, q, torch.empty_like(q), lse))
    with_qv = fwd_args(q, q, q, torch.empty_like(q), lse)
    with_qv[5] = q  # qv on head dims whose tiles do not read it
    with pytest.raises(RuntimeError, match=r"qv \(absorbed MLA\) needs head dim <= 64 and v head dim >= 256"):
        fwd(*with_qv)


def test_is_fa3_supported_on_this_gpu(fa3):
    major, _ = torch.cuda.get_device_capability()
    assert fa3.is_fa3_supported() == (major in (8, 9))
