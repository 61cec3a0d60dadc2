"""ver=4 hands flash_attn_with_kvcache to FlashAttention-4's flash_attn.cute when installed (CPU,
with a stand-in module that records the call)."""

from __future__ import annotations

import sys
import types

import pytest
import torch


@pytest.fixture
def fa4_calls(monkeypatch):
    calls: list[dict] = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
                               page_table=None, softmax_scale=None, causal=False, window_size=(None, None),
                               softcap=0.0, num_splits=1, pack_gqa=None, learnable_sink=None, score_mod=None,
                               aux_tensors=None, return_lse=False):
        calls.append(dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqused_q=seqused_q,
                          seqused_k=seqused_k, page_table=page_table, softmax_scale=softmax_scale, causal=causal,
                          window_size=window_size, softcap=softcap, num_splits=num_splits, pack_gqa=pack_gqa,
                          learnable_sink=learnable_sink, score_mod=score_mod, aux_tensors=aux_tensors,
                          return_lse=return_lse))
        return "fa4-result"

    package = types.ModuleType("flash_attn")
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_varlen_func = flash_attn_varlen_func
    package.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    return calls


def test_call_is_forwarded_with_fa4_conventions(fa3, fa4_calls):
    q, k, v = torch.randn(2, 1, 8, 64), torch.randn(2, 32, 2, 64), torch.randn(2, 32, 2, 64)
    sinks, score_mod = torch.randn(8), object()
    result = fa3.flash_attn_with_kvcache(
        q, k, v, cache_seqlens=17, causal=True, window_size=(-1, -1), softcap=5.0, num_splits=3,
        return_softmax_lse=True, sinks=sinks, score_mod=score_mod, ver=4,
    )
    assert result == "fa4-result" and len(fa4_calls) == 1
    call = fa4_calls[0]
    assert call["q"] is q and call["k"] is k and call["v"] is v
    assert torch.equal(call["seqused_k"], torch.full((2,), 17, dtype=torch.int32))
    assert call["window_size"] == (None, None) and call["causal"] is True and call["softcap"] == 5.0
    assert call["learnable_sink"] is sinks and call["score_mod"] is score_mod
    assert call["num_splits"] == 3 and call["return_lse"] is True


@pytest.mark.parametrize("argument", ["k", "rotary_cos", "cache_batch_idx", "qv", "out"])
def test_fa3_only_arguments_are_refused(fa3, fa4_calls, argument):
    q, k, v = torch.randn(2, 1, 8, 64), torch.randn(2, 32, 2, 64), torch.randn(2, 32, 2, 64)
    with pytest.raises(ValueError, match=f"does not support: {argument}"):
        fa3.flash_attn_with_kvcache(q, k, v, cache_seqlens=17, ver=4, **{argument: torch.zeros(1)})
    assert fa4_calls == []


def test_varlen_call_is_forwarded(fa3, fa4_calls):
    q, k, v = torch.randn(10, 8, 64), torch.randn(12, 2, 64), torch.randn(12, 2, 64)
    cu_q, cu_k = torch.tensor([0, 4, 10], dtype=torch.int32), torch.tensor([0, 5, 12], dtype=torch.int32)
    assert fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 7, causal=True, window_size=(8, 0), ver=4) == "fa4-result"
    assert fa4_calls[0]["window_size"] == (8, 0) and fa4_calls[0]["causal"] is True


def test_dense_rejects_ver_4(fa3):
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(ValueError, match="ver must be 3"):
        fa3.flash_attn_func(q, q, q, ver=4)
