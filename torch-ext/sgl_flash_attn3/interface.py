"""Public API, signature-compatible with FlashAttention-3 as SGLang's sgl_kernel exposes it.

SGLang calls `flash_attn_with_kvcache` positionally, so its positional order is part of the
contract. transformers reads the signature of `flash_attn_varlen_func` to decide which keyword
arguments to pass (to it and to `flash_attn_func`): every parameter is explicit, no **kwargs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import _validate as val
from ._fa4 import cache_seqlens_tensor, call_fa4_varlen
from ._ops import ops

# get_scheduler_metadata's result: [magic, num_splits, n_blocks_per_split, pack_gqa,
# use_combine, batch, num_heads, num_heads_k, head_dim, head_dim_v] (CPU int32).
_PLAN_MAGIC = 0x5F3A
_PLAN_FIELDS = 10
# The most key splits the combine kernel merges (kMaxSplits in flash-attn3/params.h; a test
# keeps the two equal).
MAX_SPLITS = 256


@dataclass
class _Problem:
    """A validated call, in the form the `fwd` op takes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    qv: torch.Tensor | None = None
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    seqused_q: torch.Tensor | None = None
    seqused_k: torch.Tensor | None = None
    kv_batch_idx: torch.Tensor | None = None
    leftpad_k: torch.Tensor | None = None
    cu_seqlens_k_new: torch.Tensor | None = None
    seqlen_k_new: int = 0  # appended keys per row, or the packed total with cu_seqlens_k_new
    page_table: torch.Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0  # bound used for planning splits with packed k


@dataclass
class _Knobs:
    """Launch choices that must not change the result beyond rounding."""

    num_splits: int
    pack_gqa: int  # -1 = heuristic, 0 / 1
    n_blocks_per_split: int = 0  # > 0 only with a precomputed plan
    deterministic: bool = False
    sm_margin: int = 0  # SMs a persistent grid leaves to other work


def _check_common(
    *,
    q_descale: torch.Tensor | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int,
    pack_gqa: bool | None,
    sm_margin: int,
    deterministic: bool,
    score_mod: object = None,
    aux_tensors: object = None,
) -> _Knobs:
    if q_descale is not None or k_descale is not None or v_descale is not None:
        raise val.not_implemented("FP8 attention (q_descale / k_descale / v_descale)")
    val.check_scalar("num_splits", num_splits, int, minimum=0)
    if num_splits > MAX_SPLITS:
        raise ValueError(f"num_splits must be <= {MAX_SPLITS}, got {num_splits}")
    if pack_gqa not in (None, False, True):
        raise TypeError(f"pack_gqa must be None or a bool, got {pack_gqa!r}")
    val.check_scalar("sm_margin", sm_margin, int, minimum=0)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    if score_mod is not None or aux_tensors is not None:
        raise ValueError("score_mod and aux_tensors are only supported with ver=4 (FlashAttention-4)")
    return _Knobs(num_splits, -1 if pack_gqa is None else int(pack_gqa), 0, deterministic, sm_margin)


def _check_version(ver: int, handoff: bool = True) -> None:
    if ver != 3:
        also = " or 4 (FlashAttention-4)" if handoff else ""
        raise ValueError(f"ver must be 3 (this kernel){also}, got {ver!r}")


def _softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
    if softmax_scale is None:
        return head_dim**-0.5
    val.check_scalar("softmax_scale", softmax_scale, float)
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale!r}")
    return float(softmax_scale)


def _check_qv(qv: torch.Tensor | None, q: torch.Tensor, dv: int) -> None:
    if qv is None:
        return
    val.check_tensor("qv", qv, dtypes=(q.dtype,), shape=(*q.shape[:-1], dv))
    if q.shape[-1] > 64 or dv < 256:
        raise ValueError(
            f"qv (absorbed MLA) needs head dim <= 64 and v head dim >= 256, got {q.shape[-1]} and {dv}"
        )
    val.check_attn_layout("qv", qv)


def _run(
    prob: _Problem,
    knobs: _Knobs,
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
    q = prob.q
    window_left, window_right = _mask_args(causal, window_size, attention_chunk)
    chunk = attention_chunk or 0
    val.check_scalar("softcap", softcap, float, minimum=0.0)
    qv_dim = prob.qv.shape[-1] if prob.qv is not None else 0
    scale = _softmax_scale(softmax_scale, q.shape[-1] + qv_dim)

    dv = prob.v.shape[-1]
    packed_q = prob.cu_seqlens_q is not None
    lse_shape = (q.shape[1], q.shape[0]) if packed_q else (q.shape[0], q.shape[2], q.shape[1])
    if out is not None:
        val.check_tensor("out", out, dtypes=(q.dtype,), shape=(*q.shape[:-1], dv))
        val.check_attn_layout("out", out)
    val.check_device(
        q, k=prob.k, v=prob.v, qv=prob.qv, out=out, cu_seqlens_q=prob.cu_seqlens_q, cu_seqlens_k=prob.cu_seqlens_k,
        seqused_q=prob.seqused_q, seqused_k=prob.seqused_k, cache_batch_idx=prob.kv_batch_idx,
        cache_leftpad=prob.leftpad_k, cu_seqlens_k_new=prob.cu_seqlens_k_new, page_table=prob.page_table, sinks=sinks,
    )
    if out is None:
        out = torch.empty((*q.shape[:-1], dv), dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    ops.fwd(
        q, prob.k, prob.v, out, lse, prob.qv,
        prob.cu_seqlens_q, prob.cu_seqlens_k, prob.seqused_q, prob.seqused_k, prob.kv_batch_idx, prob.leftpad_k,
        prob.cu_seqlens_k_new, prob.seqlen_k_new, prob.page_table,
        None if sinks is None else sinks.to(torch.float32).contiguous(),
        prob.max_seqlen_q, prob.max_seqlen_k, scale, window_left, window_right, chunk, float(softcap),
        knobs.num_splits, knobs.pack_gqa, knobs.n_blocks_per_split, knobs.deterministic, knobs.sm_margin,
    )
    return (out, lse) if return_softmax_lse else out


def _mask_args(causal: bool, window_size: tuple[int, int], attention_chunk: int | None) -> tuple[int, int]:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    window_left, window_right = val.check_window(window_size)
    if causal:
        window_right = 0  # causal is the right window closed at the diagonal
    val.check_scalar("attention_chunk", attention_chunk or 0, int, minimum=0)
    return window_left, window_right


def _check_qkv(q: torch.Tensor, k: torch.Tensor, vv: torch.Tensor, q_ndim: int, k_ndim: int, qv_given: bool) -> None:
    val.check_tensor("q", q, ndim=q_ndim, dtypes=val.ATTN_DTYPES)
    val.check_tensor("k", k, ndim=k_ndim, dtypes=(q.dtype,))
    val.check_tensor("v", vv, ndim=k_ndim, dtypes=(q.dtype,))
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k head dim ({k.shape[-1]}) must equal q head dim ({q.shape[-1]})")
    if vv.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must match k in every dimension but the last: {tuple(vv.shape)} vs {tuple(k.shape)}")
    val.check_heads(q.shape[-2], k.shape[-2])
    val.check_head_dims(q, q.shape[-1], vv.shape[-1])
    if not qv_given and vv.shape[-1] != q.shape[-1] and (q.shape[-1], vv.shape[-1]) != (192, 128):
        raise ValueError(
            f"v head dim {vv.shape[-1]} != q head dim {q.shape[-1]} needs qv (absorbed MLA) unless it is 192 -> 128"
        )
    for name, t in (("q", q), ("k", k), ("v", vv)):
        val.check_attn_layout(name, t)


def _max_seqlen(name: str, value: int | None, cu_seqlens: torch.Tensor) -> int:
    if value is None:
        # A host sync; pass the max length explicitly on hot paths and under CUDA graphs.
        return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
    val.check_scalar(name, value, int, minimum=0)
    return value


def _check_page_table(page_table: torch.Tensor, batch: int, k: torch.Tensor) -> torch.Tensor:
    val.check_tensor("page_table", page_table, ndim=2, dtypes=(torch.int32,))
    if page_table.shape[0] != batch:
        raise ValueError(f"page_table must have one row per batch entry ({batch}), got {tuple(page_table.shape)}")
    if page_table.stride(1) != 1:
        raise ValueError("page_table must be contiguous in its last dimension (rows may be strided)")
    if k.dim() != 4:
        raise ValueError(f"with page_table, k/v must be (num_pages, page_size, heads_k, dim), got {tuple(k.shape)}")
    return page_table


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
    score_mod: object = None,
    aux_tensors: object = None,
    ver: int = 3,
    *,
    s_aux: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense attention. q (b, sq, h, d), k (b, sk, h_k, d), v (b, sk, h_k, dv) -> (b, sq, h, dv).

    Returns `out`, or `(out, softmax_lse)` with lse (b, h, sq) fp32 when return_softmax_lse.
    Takes every keyword of flash_attn_varlen_func (transformers passes them to both); ver must be 3.
    """
    _check_version(ver, handoff=False)
    knobs = _check_common(
        q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic, score_mod=score_mod,
        aux_tensors=aux_tensors,
    )
    _check_qkv(q, k, v, 4, 4, qv is not None)
    _check_qv(qv, q, v.shape[-1])
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k batch ({k.shape[0]}) must equal q batch ({q.shape[0]})")
    sinks = val.check_sinks(sinks, s_aux, q.shape[2])
    return _run(
        _Problem(q, k, v, qv=qv, max_seqlen_q=q.shape[1], max_seqlen_k=k.shape[1]), knobs,
        softmax_scale=softmax_scale, causal=causal, window_size=window_size, attention_chunk=attention_chunk,
        softcap=softcap, sinks=sinks, out=out, return_softmax_lse=return_softmax_lse,
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
    score_mod: object = None,
    aux_tensors: object = None,
    ver: int = 3,
    *,
    s_aux: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Packed variable-length attention.

    q (total_q, h, d); k/v (total_k, h_k, d|dv), or the paged pool (num_pages, page_size, h_k, .)
    with page_table (b, max_pages). Sequence b owns q rows cu_seqlens_q[b]:cu_seqlens_q[b+1]
    (int32, (b+1,)), limited to seqused_q[b] when given; likewise for k (with a page table the
    key counts come from seqused_k, else from cu_seqlens_k). Returns `out` (total_q, h, dv), or
    `(out, softmax_lse)` with lse (h, total_q). ver=4 hands the call to FlashAttention-4.
    """
    if ver == 4:
        return call_fa4_varlen(
            dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqused_q=seqused_q,
                 seqused_k=seqused_k, page_table=page_table, softmax_scale=softmax_scale, causal=causal,
                 window_size=window_size, softcap=softcap, pack_gqa=pack_gqa,
                 return_softmax_lse=return_softmax_lse, sinks=sinks if sinks is not None else s_aux,
                 score_mod=score_mod, aux_tensors=aux_tensors),
            unsupported=dict(qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, out=out,
                             attention_chunk=attention_chunk or None, deterministic=deterministic or None),
        )
    _check_version(ver)
    knobs = _check_common(
        q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic, score_mod=score_mod,
        aux_tensors=aux_tensors,
    )
    paged = page_table is not None
    _check_qkv(q, k, v, 3, 4 if paged else 3, qv is not None)
    _check_qv(qv, q, v.shape[-1])
    val.check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q must have at least one entry")
    if paged:
        _check_page_table(page_table, batch, k)
        if seqused_k is None and cu_seqlens_k is None:
            raise ValueError("with page_table, pass seqused_k (or cu_seqlens_k) for the key counts")
    elif cu_seqlens_k is None:
        raise ValueError("cu_seqlens_k is required (it may only be None with a page_table)")
    if cu_seqlens_k is not None:
        cu_seqlens_k = val.check_int_vector("cu_seqlens_k", cu_seqlens_k, batch + 1)
    if max_seqlen_k is not None:
        val.check_scalar("max_seqlen_k", max_seqlen_k, int, minimum=0)
    prob = _Problem(
        q, k, v, qv=qv,
        cu_seqlens_q=cu_seqlens_q.contiguous(),
        cu_seqlens_k=cu_seqlens_k,
        seqused_q=None if seqused_q is None else val.check_int_vector("seqused_q", seqused_q, batch),
        seqused_k=None if seqused_k is None else val.check_int_vector("seqused_k", seqused_k, batch),
        page_table=page_table,
        max_seqlen_q=_max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q),
        # Without max_seqlen_k the packed total bounds every row (used only to plan splits).
        max_seqlen_k=max_seqlen_k if max_seqlen_k is not None else (0 if paged else k.shape[0]),
    )
    sinks = val.check_sinks(sinks, s_aux, q.shape[1])
    return _run(
        prob, knobs, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        attention_chunk=attention_chunk, softcap=softcap, sinks=sinks, out=out, return_softmax_lse=return_softmax_lse,
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


def _check_new_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: int,
    cu_seqlens_k_new: torch.Tensor | None,
) -> torch.Tensor | None:
    ndim = 3 if cu_seqlens_k_new is not None else 4
    val.check_tensor("k", k, ndim=ndim, dtypes=(k_cache.dtype,))
    val.check_tensor("v", v, ndim=ndim, dtypes=(k_cache.dtype,))
    if k.shape[-2:] != k_cache.shape[-2:] or v.shape[-2:] != v_cache.shape[-2:] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"k {tuple(k.shape)} / v {tuple(v.shape)} must match the cache's heads and head dims "
            f"({tuple(k_cache.shape[-2:])}, {tuple(v_cache.shape[-2:])})"
        )
    if ndim == 4 and k.shape[0] != batch:
        raise ValueError(f"k must have batch {batch}, got {k.shape[0]}")
    for name, t in (("k", k), ("v", v)):
        val.check_attn_layout(name, t)
    if cu_seqlens_k_new is None:
        return None
    return val.check_int_vector("cu_seqlens_k_new", cu_seqlens_k_new, batch + 1)


def _check_rotary(
    rotary_cos: torch.Tensor | None, rotary_sin: torch.Tensor | None, head_dim: int, appending: bool,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if rotary_cos is None and rotary_sin is None:
        return None
    if rotary_cos is None or rotary_sin is None:
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if not appending:
        raise ValueError("rotary_cos / rotary_sin apply to appended keys: pass k and v too")
    val.check_tensor("rotary_cos", rotary_cos, ndim=2, dtypes=val.FLOAT_DTYPES)
    val.check_tensor("rotary_sin", rotary_sin, dtypes=val.FLOAT_DTYPES, shape=tuple(rotary_cos.shape))
    if 2 * rotary_cos.shape[1] > head_dim:
        raise ValueError(f"rotary_dim = 2 * rotary_cos.shape[1] = {2 * rotary_cos.shape[1]} exceeds head dim {head_dim}")
    return rotary_cos.float().contiguous(), rotary_sin.float().contiguous()


def _plan_from_metadata(metadata: torch.Tensor, batch: int, heads: int, heads_k: int, d: int, dv: int) -> _Knobs:
    if (
        not isinstance(metadata, torch.Tensor) or metadata.device.type != "cpu" or metadata.dtype != torch.int32
        or metadata.shape != (_PLAN_FIELDS,) or int(metadata[0]) != _PLAN_MAGIC
    ):
        raise ValueError("scheduler_metadata must be the tensor returned by get_scheduler_metadata")
    fields = metadata.tolist()
    if fields[5:] != [batch, heads, heads_k, d, dv]:
        raise ValueError(
            f"scheduler_metadata was computed for (batch, heads, heads_k, d, dv) = {tuple(fields[5:])}, "
            f"but this call has {(batch, heads, heads_k, d, dv)}"
        )
    num_splits, n_blocks_per_split, pack_gqa, _ = fields[1:5]
    return _Knobs(num_splits, pack_gqa, n_blocks_per_split, False)


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
    """Attention of q against a KV cache, optionally appending k/v to it first (in place).

    q (b, sq, h, d), or (total_q, h, d) with cu_seqlens_q; k_cache (b_cache, s_cache, h_k, d) and
    v_cache (b_cache, s_cache, h_k, dv), or paged pools (num_pages, page_size, h_k, .) with
    page_table (b, max_pages). Batch row b attends to the first cache_seqlens[b] keys of cache row
    cache_batch_idx[b] (default b), skipping the first cache_leftpad[b]. With k/v
    ((b, sn, h_k, .) or (total_new, h_k, .) with cu_seqlens_k_new), new key j is written to slot
    cache_seqlens[b] + j (rotated by rotary_cos/sin when given) and attended too.
    Returns `out` like q with dv, or `(out, softmax_lse)`.
    """
    if ver == 4:
        batch = q.shape[0] if cu_seqlens_q is None else cu_seqlens_q.numel() - 1
        return call_fa4_varlen(
            dict(q=q, k=k_cache, v=v_cache, cu_seqlens_q=cu_seqlens_q,
                 seqused_k=cache_seqlens_tensor(cache_seqlens, batch, q.device), page_table=page_table,
                 softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                 num_splits=num_splits, pack_gqa=pack_gqa, return_softmax_lse=return_softmax_lse,
                 sinks=sinks if sinks is not None else s_aux, score_mod=score_mod, aux_tensors=aux_tensors),
            unsupported=dict(
                k=k, v=v, qv=qv, rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_seqlens=rotary_seqlens,
                cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, cu_seqlens_k_new=cu_seqlens_k_new,
                q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, scheduler_metadata=scheduler_metadata,
                out=out, attention_chunk=attention_chunk or None, deterministic=deterministic or None,
            ),
        )
    _check_version(ver)
    knobs = _check_common(
        q_descale=q_descale, k_descale=k_descale, v_descale=v_descale, num_splits=num_splits,
        pack_gqa=pack_gqa, sm_margin=sm_margin, deterministic=deterministic, score_mod=score_mod,
        aux_tensors=aux_tensors,
    )
    if not isinstance(rotary_interleaved, bool):
        raise TypeError(f"rotary_interleaved must be a bool, got {rotary_interleaved!r}")
    packed_q = cu_seqlens_q is not None
    _check_qkv(q, k_cache, v_cache, 3 if packed_q else 4, 4, qv is not None)
    _check_qv(qv, q, v_cache.shape[-1])
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

    appending = k is not None or v is not None
    if appending and (k is None or v is None):
        raise ValueError("k and v must be given together")
    if cu_seqlens_k_new is not None and not appending:
        raise ValueError("cu_seqlens_k_new describes appended k/v: pass k and v too")
    if rotary_seqlens is not None and rotary_cos is None:
        raise ValueError("rotary_seqlens needs rotary_cos / rotary_sin")
    rotary = _check_rotary(rotary_cos, rotary_sin, q.shape[-1], appending)
    if rotary_seqlens is not None:
        rotary_seqlens = val.check_int_vector("rotary_seqlens", rotary_seqlens, batch)
    if appending:
        cu_seqlens_k_new = _check_new_kv(k, v, k_cache, v_cache, batch, cu_seqlens_k_new)
        if cache_seqlens is None:
            raise ValueError("cache_seqlens is required with k/v: it gives the slot of the first new key")

    paged = page_table is not None
    if paged:
        _check_page_table(page_table, batch, k_cache)
        if cache_batch_idx is not None or cache_leftpad is not None:
            raise ValueError("page_table cannot be combined with cache_batch_idx or cache_leftpad")
        if cache_seqlens is None:
            raise ValueError("cache_seqlens is required with page_table")
    if cache_batch_idx is not None:
        cache_batch_idx = val.check_int_vector("cache_batch_idx", cache_batch_idx, batch)
    elif not paged and k_cache.shape[0] != batch:
        raise ValueError(
            f"k_cache batch ({k_cache.shape[0]}) must equal the batch of q ({batch}) unless "
            f"cache_batch_idx selects the cache rows"
        )
    if scheduler_metadata is not None:
        if deterministic:
            raise ValueError(
                "scheduler_metadata plans splits from the batch shape; deterministic=True plans its own "
                "batch-independent splits, so pass one or the other"
            )
        planned = _plan_from_metadata(scheduler_metadata, batch, q.shape[-2], k_cache.shape[-2], q.shape[-1], v_cache.shape[-1])
        knobs = dataclasses.replace(planned, sm_margin=knobs.sm_margin)
    sinks = val.check_sinks(sinks, s_aux, q.shape[-2])
    seqused_k = _cache_seqlens(cache_seqlens, batch, q.device)
    _mask_args(causal, window_size, attention_chunk)  # fail on bad masks before writing the cache

    if appending:
        val.check_device(q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, page_table=page_table,
                         cache_seqlens=seqused_k, cu_seqlens_k_new=cu_seqlens_k_new, rotary_seqlens=rotary_seqlens)
        cos, sin = rotary if rotary is not None else (None, None)
        ops.append_kv(k_cache, v_cache, k, v, seqused_k, cache_batch_idx, cu_seqlens_k_new, page_table,
                      None if cos is None else cos.to(q.device), None if sin is None else sin.to(q.device),
                      rotary_seqlens, rotary_interleaved)
        if rotary is not None:
            q_rot = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            local = causal or window_size[0] >= 0 or window_size[1] >= 0
            ops.rotary_q(q, q_rot, seqused_k, cu_seqlens_q, max_seqlen_q, cos.to(q.device), sin.to(q.device),
                         rotary_seqlens, rotary_interleaved, local)
            q = q_rot

    prob = _Problem(
        q, k_cache, v_cache, qv=qv,
        cu_seqlens_q=None if cu_seqlens_q is None else cu_seqlens_q.contiguous(),
        seqused_k=seqused_k,
        kv_batch_idx=cache_batch_idx,
        leftpad_k=None if cache_leftpad is None else val.check_int_vector("cache_leftpad", cache_leftpad, batch),
        cu_seqlens_k_new=cu_seqlens_k_new,
        seqlen_k_new=0 if not appending else (k.shape[0] if cu_seqlens_k_new is not None else k.shape[1]),
        page_table=page_table,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=0 if paged else k_cache.shape[1],
    )
    return _run(
        prob, knobs, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
        attention_chunk=attention_chunk, softcap=softcap, sinks=sinks, out=out, return_softmax_lse=return_softmax_lse,
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
    """Plan a decode step once (split count, GQA packing) and reuse it in every layer's
    flash_attn_with_kvcache(..., scheduler_metadata=...). The plan depends only on shapes, so
    it is a small CPU tensor: reusing it costs no device work and no host sync."""
    for name, value in (("batch_size", batch_size), ("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k),
                        ("num_heads_q", num_heads_q), ("num_heads_kv", num_heads_kv), ("headdim", headdim),
                        ("max_seqlen_k_new", max_seqlen_k_new)):
        val.check_scalar(name, value, int, minimum=0)
    val.check_heads(num_heads_q, num_heads_kv)
    headdim_v = headdim if headdim_v is None else headdim_v
    if qkv_dtype == torch.float8_e4m3fn:
        raise val.not_implemented("FP8 attention (qkv_dtype float8_e4m3fn)")
    if qkv_dtype not in val.ATTN_DTYPES:
        raise TypeError(f"qkv_dtype must be float16 or bfloat16, got {qkv_dtype}")
    val.check_head_dims(torch.empty(0, dtype=qkv_dtype), headdim, headdim_v)
    knobs = _check_common(
        q_descale=None, k_descale=None, v_descale=None, num_splits=num_splits, pack_gqa=pack_gqa,
        sm_margin=sm_margin, deterministic=False,
    )
    device = cache_seqlens.device if isinstance(cache_seqlens, torch.Tensor) else torch.device("cuda")
    plan = torch.empty(4, dtype=torch.int32)
    ops.plan(plan, batch_size, max_seqlen_q, max_seqlen_k + max_seqlen_k_new, num_heads_q, num_heads_kv, headdim,
             headdim_v, 0 if qkv_dtype == torch.float16 else 1, knobs.num_splits, knobs.pack_gqa, False,
             bool(page_size), _device_index(device))
    return torch.tensor([_PLAN_MAGIC, *plan.tolist(), batch_size, num_heads_q, num_heads_kv, headdim, headdim_v],
                        dtype=torch.int32)


def _device_index(device: torch.device) -> int:
    if device.type == "cuda" and device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def is_fa3_supported(device: torch.device | int | str | None = None) -> bool:
    """True when this build has kernels for the (current or given) CUDA device."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    # The portable kernels are compiled for sm80 (runs on 8.x) and sm90a (runs on 9.0).
    return major == 8 or (major, minor) == (9, 0)
