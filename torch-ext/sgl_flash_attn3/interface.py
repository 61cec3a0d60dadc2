"""Public API, signature-compatible with FlashAttention-3 as SGLang's sgl_kernel exposes it.

SGLang calls `flash_attn_with_kvcache` positionally, so its positional order is part of the
contract. transformers reads the signature of `flash_attn_varlen_func` to decide which keyword
arguments to pass (to it and to `flash_attn_func`): every parameter is explicit, no **kwargs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _validate as val
from ._ops import ops


@dataclass
class _Problem:
    """A validated call, in the form the `fwd` op takes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    seqused_q: torch.Tensor | None = None
    seqused_k: torch.Tensor | None = None
    kv_batch_idx: torch.Tensor | None = None
    leftpad_k: torch.Tensor | None = None
    max_seqlen_q: int = 0


def _check_common(
    *,
    qv: torch.Tensor | None,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int,
    pack_gqa: bool | None,
    sm_margin: int,
    deterministic: bool,
    score_mod: object = None,
    aux_tensors: object = None,
) -> None:
    if qv is not None:
        raise val.not_implemented("qv (absorbed MLA)")
    if q_descale is not None or k_descale is not None or v_descale is not None:
        raise val.not_implemented("FP8 attention (q_descale / k_descale / v_descale)")
    val.check_scalar("num_splits", num_splits, int, minimum=0)
    if num_splits > 1:
        raise val.not_implemented("split-KV (num_splits > 1)")
    if pack_gqa not in (None, False, True):
        raise TypeError(f"pack_gqa must be None or a bool, got {pack_gqa!r}")
    if pack_gqa:
        raise val.not_implemented("pack_gqa=True (GQA heads packed into query rows)")
    val.check_scalar("sm_margin", sm_margin, int, minimum=0)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    if score_mod is not None or aux_tensors is not None:
        raise ValueError("score_mod and aux_tensors are only supported with ver=4 (FlashAttention-4)")


def _softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
    if softmax_scale is None:
        return head_dim**-0.5
    val.check_scalar("softmax_scale", softmax_scale, float)
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale!r}")
    return float(softmax_scale)


def _run(
    prob: _Problem,
    *,
    softmax_scale: float | None,
    causal: bool,
    window_size: tuple[int, int],
    attention_chunk: int | None,
    softcap: float,
    sinks: torch.Tensor | None,
    out: torch.Tensor | None,
    return_softmax_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    q, k = prob.q, prob.k
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    window_left, window_right = val.check_window(window_size)
    if causal:
        window_right = 0  # causal is the right window closed at the diagonal
    chunk = 0 if attention_chunk is None else attention_chunk
    val.check_scalar("attention_chunk", chunk, int, minimum=0)
    val.check_scalar("softcap", softcap, float, minimum=0.0)
    scale = _softmax_scale(softmax_scale, q.shape[-1])

    lse_shape = (q.shape[1], q.shape[0]) if prob.cu_seqlens_q is not None else (q.shape[0], q.shape[2], q.shape[1])
    if out is not None:
        val.check_tensor("out", out, dtypes=(q.dtype,), shape=(*q.shape[:-1], prob.v.shape[-1]))
        val.check_attn_layout("out", out)
    val.check_device(
        q, k=k, v=prob.v, out=out, cu_seqlens_q=prob.cu_seqlens_q, cu_seqlens_k=prob.cu_seqlens_k,
        seqused_q=prob.seqused_q, seqused_k=prob.seqused_k, cache_batch_idx=prob.kv_batch_idx,
        cache_leftpad=prob.leftpad_k, sinks=sinks,
    )
    if out is None:
        out = torch.empty((*q.shape[:-1], prob.v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    ops.fwd(
        q, k, prob.v, out, lse,
        prob.cu_seqlens_q, prob.cu_seqlens_k, prob.seqused_q, prob.seqused_k,
        prob.kv_batch_idx, prob.leftpad_k,
        None if sinks is None else sinks.to(torch.float32).contiguous(),
        prob.max_seqlen_q, scale, window_left, window_right, chunk, float(softcap),
    )
    return (out, lse) if return_softmax_lse else out


def _check_qkv(q: torch.Tensor, k: torch.Tensor, vv: torch.Tensor, q_ndim: int, k_ndim: int) -> None:
    val.check_tensor("q", q, ndim=q_ndim, dtypes=val.ATTN_DTYPES)
    val.check_tensor("k", k, ndim=k_ndim, dtypes=(q.dtype,))
    val.check_tensor("v", vv, ndim=k_ndim, dtypes=(q.dtype,))
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k head dim ({k.shape[-1]}) must equal q head dim ({q.shape[-1]})")
    if vv.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must match k in every dimension but the last: {tuple(vv.shape)} vs {tuple(k.shape)}")
    val.check_heads(q.shape[-2], k.shape[-2])
    val.check_head_dims(q, q.shape[-1], vv.shape[-1])
    for name, t in (("q", q), ("k", k), ("v", vv)):
        val.check_attn_layout(name, t)


def _max_seqlen(name: str, value: int | None, cu_seqlens: torch.Tensor) -> int:
    if value is None:
        # A host sync; pass max_seqlen_q explicitly on hot paths and under CUDA graphs.
        return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
    val.check_scalar(name, value, int, minimum=0)
    return value


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
    return_softmax_lse: bool = False,
    sinks: torch.Tensor | None = None,
    *,
    s_aux: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense attention. q (b, sq, h, d), k (b, sk, h_k, d), v (b, sk, h_k, dv) -> (b, sq, h, dv).

    Returns `out`, or `(out, softmax_lse)` with lse (b, h, sq) fp32 when return_softmax_lse.
    """
    _check_common(
        qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic,
    )
    _check_qkv(q, k, v, 4, 4)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k batch ({k.shape[0]}) must equal q batch ({q.shape[0]})")
    sinks = val.check_sinks(sinks, s_aux, q.shape[2])
    return _run(
        _Problem(q, k, v), softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        attention_chunk=attention_chunk, softcap=softcap, sinks=sinks, out=out,
        return_softmax_lse=return_softmax_lse,
    )


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    seqused_q: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
    return_softmax_lse: bool = False,
    sinks: torch.Tensor | None = None,
    *,
    s_aux: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Packed variable-length attention.

    q (total_q, h, d), k (total_k, h_k, d), v (total_k, h_k, dv); sequence b owns rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1] (int32, (b+1,)), limited to seqused_q[b] rows when given
    (likewise for k). Returns `out` (total_q, h, dv), or `(out, softmax_lse)` with lse (h, total_q).
    """
    _check_common(
        qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic,
    )
    if page_table is not None:
        raise val.not_implemented("paged KV (page_table)")
    _check_qkv(q, k, v, 3, 3)
    val.check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q must have at least one entry")
    if cu_seqlens_k is None:
        raise ValueError("cu_seqlens_k is required (it may only be None with a page_table)")
    cu_seqlens_k = val.check_int_vector("cu_seqlens_k", cu_seqlens_k, batch + 1)
    if max_seqlen_k is not None:
        val.check_scalar("max_seqlen_k", max_seqlen_k, int, minimum=0)
    prob = _Problem(
        q, k, v,
        cu_seqlens_q=cu_seqlens_q.contiguous(),
        cu_seqlens_k=cu_seqlens_k,
        seqused_q=None if seqused_q is None else val.check_int_vector("seqused_q", seqused_q, batch),
        seqused_k=None if seqused_k is None else val.check_int_vector("seqused_k", seqused_k, batch),
        max_seqlen_q=_max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q),
    )
    sinks = val.check_sinks(sinks, s_aux, q.shape[1])
    return _run(
        prob, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        attention_chunk=attention_chunk, softcap=softcap, sinks=sinks, out=out,
        return_softmax_lse=return_softmax_lse,
    )


def _cache_seqlens(value: int | torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"cache_seqlens must be >= 0, got {value}")
        # An int means the same length for every batch row.
        return torch.full((batch,), value, dtype=torch.int32, device=device)
    return val.check_int_vector("cache_seqlens", value, batch)


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    rotary_seqlens: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int | None = None,
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    scheduler_metadata: torch.Tensor | None = None,
    num_splits: int = 0,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
    return_softmax_lse: bool = False,
    sinks: torch.Tensor | None = None,
    score_mod: object = None,
    aux_tensors: object = None,
    ver: int = 3,
    *,
    s_aux: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q against a KV cache.

    q (b, sq, h, d), or (total_q, h, d) with cu_seqlens_q; k_cache (b_cache, sk_cache, h_k, d),
    v_cache (b_cache, sk_cache, h_k, dv). Batch row b attends to the first cache_seqlens[b] keys
    of cache row cache_batch_idx[b] (default b), skipping the first cache_leftpad[b].
    Returns `out` like q with dv, or `(out, softmax_lse)`.
    """
    if ver == 4:
        raise ImportError(
            "ver=4 hands the call to FlashAttention-4 (package flash-attn-4), which this build "
            "does not bundle; install flash-attn-4 and call flash_attn.cute directly"
        )
    if ver != 3:
        raise ValueError(f"ver must be 3 (this kernel) or 4 (FlashAttention-4), got {ver!r}")
    _check_common(
        qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic, score_mod=score_mod,
        aux_tensors=aux_tensors,
    )
    if k is not None or v is not None:
        raise val.not_implemented("in-place KV append (k / v)")
    for name, value in (
        ("rotary embedding (rotary_cos / rotary_sin)", rotary_cos if rotary_cos is not None else rotary_sin),
        ("rotary_seqlens", rotary_seqlens),
        ("ragged KV append (cu_seqlens_k_new)", cu_seqlens_k_new),
        ("paged KV (page_table)", page_table),
        ("scheduler_metadata (precomputed split-KV plan)", scheduler_metadata),
    ):
        if value is not None:
            raise val.not_implemented(name)
    if not isinstance(rotary_interleaved, bool):
        raise TypeError(f"rotary_interleaved must be a bool, got {rotary_interleaved!r}")

    packed_q = cu_seqlens_q is not None
    _check_qkv(q, k_cache, v_cache, 3 if packed_q else 4, 4)
    if packed_q:
        val.check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
        batch = cu_seqlens_q.shape[0] - 1
        if batch < 0:
            raise ValueError("cu_seqlens_q must have at least one entry")
        if max_seqlen_q is None:
            raise ValueError("max_seqlen_q is required with cu_seqlens_q")
        val.check_scalar("max_seqlen_q", max_seqlen_q, int, minimum=0)
    else:
        batch = q.shape[0]
        max_seqlen_q = q.shape[1]
    if cache_batch_idx is not None:
        cache_batch_idx = val.check_int_vector("cache_batch_idx", cache_batch_idx, batch)
    elif k_cache.shape[0] != batch:
        raise ValueError(
            f"k_cache batch ({k_cache.shape[0]}) must equal the batch of q ({batch}) unless "
            f"cache_batch_idx selects the cache rows"
        )
    prob = _Problem(
        q, k_cache, v_cache,
        cu_seqlens_q=None if cu_seqlens_q is None else cu_seqlens_q.contiguous(),
        seqused_k=_cache_seqlens(cache_seqlens, batch, q.device),
        kv_batch_idx=cache_batch_idx,
        leftpad_k=None if cache_leftpad is None else val.check_int_vector("cache_leftpad", cache_leftpad, batch),
        max_seqlen_q=max_seqlen_q,
    )
    sinks = val.check_sinks(sinks, s_aux, q.shape[-2])
    return _run(
        prob, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        attention_chunk=attention_chunk, softcap=softcap, sinks=sinks, out=out,
        return_softmax_lse=return_softmax_lse,
    )


def get_scheduler_metadata(
    batch_size: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_heads_q: int,
    num_heads_kv: int,
    headdim: int,
    cache_seqlens: torch.Tensor,
    qkv_dtype: torch.dtype = torch.bfloat16,
    headdim_v: int | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    page_size: int | None = None,
    max_seqlen_k_new: int = 0,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    has_softcap: bool = False,
    num_splits: int = 0,
    pack_gqa: bool | None = None,
    sm_margin: int = 0,
) -> torch.Tensor:
    """Precompute the split-KV / tile plan of a decode step once, for reuse by every layer."""
    raise val.not_implemented("get_scheduler_metadata (split-KV scheduling)")


def is_fa3_supported(device: torch.device | int | str | None = None) -> bool:
    """True when this build has kernels for the (current or given) CUDA device."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    # The portable kernels are compiled for sm80 (runs on 8.x) and sm90a (runs on 9.0).
    return major == 8 or (major, minor) == (9, 0)
