"""Every rejected input gets an error that names the argument and what was expected (CPU).

Shape, dtype and combination rules are checked before the device, so CPU tensors reach them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from direct_op import fwd_args

BF16 = torch.bfloat16


def t(*shape, dtype=BF16):
    return torch.randn(*shape).to(dtype)


def qkv(b=2, sq=8, sk=8, h=4, h_k=2, d=64, dv=None, dtype=BF16):
    return t(b, sq, h, d, dtype=dtype), t(b, sk, h_k, d, dtype=dtype), t(b, sk, h_k, dv or d, dtype=dtype)


def cu(*lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def dense_call(fa3, **kwargs):
    q, k, v = kwargs.pop("qkv", qkv())
    return fa3.flash_attn_func(q, k, v, **kwargs)


DENSE_ERRORS = [
    # (kwargs, exception, message fragment)
    (dict(qkv=qkv(dtype=torch.float32)), TypeError, "q must have dtype float16, bfloat16"),
    (dict(qkv=(t(2, 8, 4, 64), t(2, 8, 2, 64, dtype=torch.float16), t(2, 8, 2, 64))), TypeError, "k must have dtype bfloat16"),
    (dict(qkv=(t(8, 4, 64), t(2, 8, 2, 64), t(2, 8, 2, 64))), ValueError, "q must have 4 dimensions"),
    (dict(qkv=qkv(h=5, h_k=2)), ValueError, "multiple of the number of key/value heads"),
    (dict(qkv=(t(2, 8, 4, 64), t(2, 8, 2, 128), t(2, 8, 2, 64))), ValueError, "k head dim (128) must equal q head dim (64)"),
    (dict(qkv=(t(2, 8, 4, 64), t(2, 8, 2, 64), t(2, 9, 2, 64))), ValueError, "v must match k"),
    (dict(qkv=(t(2, 8, 4, 64), t(3, 8, 2, 64), t(3, 8, 2, 64))), ValueError, "k batch (3) must equal q batch (2)"),
    (dict(qkv=qkv(d=80)), NotImplementedError, "head dim 80"),
    (dict(qkv=qkv(dv=128)), NotImplementedError, "v head dim 128"),
    (dict(qkv=(t(2, 8, 4, 128)[..., ::2], t(2, 8, 2, 64), t(2, 8, 2, 64))), ValueError, "q must be contiguous in its last dimension"),
    (dict(qkv=(t(2, 8, 4, 68)[..., :64], t(2, 8, 2, 64), t(2, 8, 2, 64))), ValueError, "q.stride(2) = 68 must be a multiple of 8"),
    (dict(window_size=(4,)), TypeError, "window_size must be a pair of ints"),
    (dict(window_size=(-2, 0)), ValueError, "window_size entries must be >= -1"),
    (dict(causal=1), TypeError, "causal must be a bool"),
    (dict(softcap=-1.0), ValueError, "softcap must be >= 0.0"),
    (dict(softmax_scale=0.0), ValueError, "softmax_scale must be positive"),
    (dict(attention_chunk=-3), ValueError, "attention_chunk must be >= 0"),
    (dict(num_splits=-1), ValueError, "num_splits must be >= 0"),
    (dict(num_splits=257), ValueError, "num_splits must be <= 256"),
    (dict(pack_gqa="yes"), TypeError, "pack_gqa must be None or a bool"),
    (dict(sm_margin=-1), ValueError, "sm_margin must be >= 0"),
    (dict(deterministic=None), TypeError, "deterministic must be a bool"),
    (dict(qv=t(2, 8, 4, 64)), ValueError, "qv (absorbed MLA) needs head dim <= 64 and v head dim >= 256"),
    (dict(qkv=qkv(dv=256), qv=t(2, 8, 4, 128)), ValueError, "qv must have shape (2, 8, 4, 256)"),
    (dict(qkv=qkv(dv=256)), ValueError, "v head dim 256 != q head dim 64 needs qv"),
    (dict(q_descale=torch.ones(2, 2)), NotImplementedError, "FP8"),
    (dict(sinks=torch.zeros(3)), ValueError, "sinks must have shape (4)"),
    (dict(sinks=torch.zeros(4, dtype=torch.int32)), TypeError, "sinks must have dtype"),
    (dict(sinks=torch.zeros(4), s_aux=torch.zeros(4)), ValueError, "either sinks= or s_aux="),
    (dict(s_aux=torch.zeros(5)), ValueError, "s_aux must have shape (4)"),
    (dict(out=t(2, 8, 4, 32)), ValueError, "out must have shape (2, 8, 4, 64)"),
    (dict(out=t(2, 8, 4, 64, dtype=torch.float16)), TypeError, "out must have dtype bfloat16"),
    (dict(), ValueError, "q must be a CUDA tensor"),
]


@pytest.mark.parametrize("kwargs,exc,message", DENSE_ERRORS, ids=[e[2] for e in DENSE_ERRORS])
def test_dense_errors(fa3, kwargs, exc, message):
    with pytest.raises(exc, match=_escape(message)):
        dense_call(fa3, **kwargs)


def _escape(message: str) -> str:
    import re

    return re.escape(message)


def varlen_call(fa3, **overrides):
    args = dict(
        q=t(12, 4, 64), k=t(20, 2, 64), v=t(20, 2, 64), cu_seqlens_q=cu(5, 7), cu_seqlens_k=cu(8, 12),
        max_seqlen_q=7, max_seqlen_k=12,
    )
    args.update(overrides)
    return fa3.flash_attn_varlen_func(**args)


VARLEN_ERRORS = [
    (dict(cu_seqlens_q=cu(5, 7).long()), TypeError, "cu_seqlens_q must have dtype int32"),
    (dict(cu_seqlens_q=torch.zeros(0, dtype=torch.int32)), ValueError, "cu_seqlens_q must have at least one entry"),
    (dict(cu_seqlens_k=cu(8, 6, 6)), ValueError, "cu_seqlens_k must have shape (3)"),
    (dict(cu_seqlens_k=None), ValueError, "cu_seqlens_k is required"),
    (dict(seqused_k=torch.zeros(3, dtype=torch.int32)), ValueError, "seqused_k must have shape (2)"),
    (dict(seqused_q=torch.zeros(2)), TypeError, "seqused_q must have dtype int32"),
    (dict(max_seqlen_q=-1), ValueError, "max_seqlen_q must be >= 0"),
    (dict(max_seqlen_k=1.5), TypeError, "max_seqlen_k must be int"),
    (dict(page_table=torch.zeros(2, 4, dtype=torch.int32)), ValueError, "k must have 4 dimensions"),
    (dict(k=t(6, 16, 2, 64), v=t(6, 16, 2, 64), page_table=torch.zeros(2, 4, dtype=torch.int64)), TypeError, "page_table must have dtype int32"),
    (dict(k=t(6, 16, 2, 64), v=t(6, 16, 2, 64), page_table=torch.zeros(3, 4, dtype=torch.int32)), ValueError, "page_table must have one row per batch entry (2)"),
    (dict(k=t(6, 16, 2, 64), v=t(6, 16, 2, 64), page_table=torch.zeros(2, 4, dtype=torch.int32), cu_seqlens_k=None), ValueError, "pass seqused_k (or cu_seqlens_k)"),
    (dict(q=t(2, 6, 4, 64)), ValueError, "q must have 3 dimensions"),
    (dict(), ValueError, "q must be a CUDA tensor"),
]


@pytest.mark.parametrize("overrides,exc,message", VARLEN_ERRORS, ids=[e[2] for e in VARLEN_ERRORS])
def test_varlen_errors(fa3, overrides, exc, message):
    with pytest.raises(exc, match=_escape(message)):
        varlen_call(fa3, **overrides)


def kvcache_call(fa3, **overrides):
    args = dict(q=t(2, 1, 8, 128), k_cache=t(2, 64, 2, 128), v_cache=t(2, 64, 2, 128))
    args.update(overrides)
    return fa3.flash_attn_with_kvcache(**args)


def seqlens(*values):
    return torch.tensor(values, dtype=torch.int32)


KVCACHE_ERRORS = [
    (dict(k=t(2, 1, 2, 128)), ValueError, "k and v must be given together"),
    (dict(k=t(2, 1, 2, 128), v=t(2, 1, 2, 128)), ValueError, "cache_seqlens is required with k/v"),
    (dict(k=t(2, 1, 2, 64), v=t(2, 1, 2, 128), cache_seqlens=3), ValueError, "must match the cache's heads and head dims"),
    (dict(k=t(3, 1, 2, 128), v=t(3, 1, 2, 128), cache_seqlens=3), ValueError, "k must have batch 2"),
    (dict(rotary_cos=t(64, 32), rotary_sin=t(64, 32)), ValueError, "apply to appended keys"),
    (dict(rotary_cos=t(64, 32)), ValueError, "rotary_cos and rotary_sin must be given together"),
    (dict(k=t(2, 1, 2, 128), v=t(2, 1, 2, 128), cache_seqlens=3, rotary_cos=t(64, 80), rotary_sin=t(64, 80)), ValueError, "exceeds head dim 128"),
    (dict(rotary_seqlens=torch.zeros(2, dtype=torch.int32)), ValueError, "rotary_seqlens needs rotary_cos"),
    (dict(cu_seqlens_k_new=cu(1, 1)), ValueError, "cu_seqlens_k_new describes appended k/v"),
    (dict(k=t(2, 2, 128), v=t(2, 2, 128), cache_seqlens=3, cu_seqlens_k_new=cu(1, 1, 0)), ValueError, "cu_seqlens_k_new must have shape (3)"),
    (dict(page_table=torch.zeros(2, 1, dtype=torch.int32)), ValueError, "cache_seqlens is required with page_table"),
    (dict(page_table=torch.zeros(2, 1, dtype=torch.int32), cache_seqlens=3, cache_batch_idx=seqlens(0, 1)), ValueError, "page_table cannot be combined with cache_batch_idx"),
    (dict(scheduler_metadata=torch.zeros(4, dtype=torch.int32)), ValueError, "scheduler_metadata must be the tensor returned by get_scheduler_metadata"),
    (dict(cache_seqlens=torch.zeros(3, dtype=torch.int32)), ValueError, "cache_seqlens must have shape (2)"),
    (dict(cache_seqlens=-1), ValueError, "cache_seqlens must be >= 0"),
    (dict(cache_batch_idx=torch.zeros(2)), TypeError, "cache_batch_idx must have dtype int32"),
    (dict(cache_leftpad=torch.zeros(1, dtype=torch.int32)), ValueError, "cache_leftpad must have shape (2)"),
    (dict(k_cache=t(3, 64, 2, 128), v_cache=t(3, 64, 2, 128)), ValueError, "k_cache batch (3) must equal the batch of q (2)"),
    (dict(q=t(2, 8, 128), cu_seqlens_q=cu(1, 1)), ValueError, "max_seqlen_q is required with cu_seqlens_q"),
    (dict(rotary_interleaved=1), TypeError, "rotary_interleaved must be a bool"),
    (dict(ver=2), ValueError, "ver must be 3"),
    (dict(ver=4), ImportError, "FlashAttention-4, which is not installed"),
    (dict(score_mod=lambda s: s), ValueError, "score_mod and aux_tensors are only supported with ver=4"),
    (dict(), ValueError, "q must be a CUDA tensor"),
]


@pytest.mark.parametrize("overrides,exc,message", KVCACHE_ERRORS, ids=[e[2] for e in KVCACHE_ERRORS])
def test_kvcache_errors(fa3, overrides, exc, message):
    with pytest.raises(exc, match=_escape(message)):
        kvcache_call(fa3, **overrides)


def test_scheduler_metadata_is_a_small_cpu_plan(fa3):
    plan = fa3.get_scheduler_metadata(2, 1, 4096, 8, 2, 128, torch.zeros(2, dtype=torch.int32))
    assert plan.device.type == "cpu" and plan.dtype == torch.int32 and plan.shape == (10,)
    num_splits, per_split = int(plan[1]), int(plan[2])
    assert 1 <= num_splits <= 256 and num_splits * per_split >= 4096 // 128
    with pytest.raises(ValueError, match=_escape("computed for (batch, heads, heads_k, d, dv) = (2, 8, 2, 128, 128)")):
        kvcache_call(fa3, q=t(2, 1, 4, 128), scheduler_metadata=plan)
    with pytest.raises(ValueError, match="pass one or the other"):
        kvcache_call(fa3, scheduler_metadata=plan, deterministic=True)
    with pytest.raises(NotImplementedError, match="FP8"):
        fa3.get_scheduler_metadata(2, 1, 64, 8, 2, 128, torch.zeros(2, dtype=torch.int32), qkv_dtype=torch.float8_e4m3fn)


def test_split_limit_is_the_combine_capacity(fa3):
    """The Python-side num_splits limit is the combine kernel's capacity (kMaxSplits in params.h)."""
    header = (Path(__file__).resolve().parent.parent / "flash-attn3" / "params.h").read_text()
    assert fa3.interface.MAX_SPLITS == int(re.search(r"kMaxSplits = (\d+);", header).group(1))


def test_op_has_no_cpu_kernel(fa3):
    q = t(1, 8, 2, 64)
    out, lse = torch.empty_like(q), torch.empty(1, 2, 8)
    with pytest.raises(NotImplementedError, match="CPU"):
        fa3._ops.ops.fwd(*fwd_args(q, q, q, out, lse))
