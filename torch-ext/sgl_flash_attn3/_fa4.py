"""ver=4: hand a flash_attn_with_kvcache call to FlashAttention-4 (package flash-attn-4, module
flash_attn.cute) when it is installed, the way sgl_kernel does; a clear error otherwise."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch


def _fa4_varlen() -> Callable:
    try:
        module = importlib.import_module("flash_attn.cute")
    except ImportError as e:
        raise ImportError(
            "ver=4 hands the call to FlashAttention-4, which is not installed (pip install flash-attn-4)"
        ) from e
    return module.flash_attn_varlen_func


def flash_attn_with_kvcache_v4(
    *,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    unsupported: dict[str, object],
    cu_seqlens_q: torch.Tensor | None,
    cache_seqlens: torch.Tensor | int | None,
    page_table: torch.Tensor | None,
    softmax_scale: float | None,
    causal: bool,
    window_size: tuple[int, int],
    softcap: float,
    num_splits: int,
    pack_gqa: bool | None,
    return_softmax_lse: bool,
    sinks: torch.Tensor | None,
    score_mod: object,
    aux_tensors: object,
):
    """`unsupported` maps FA3-only arguments to their values; any that is set is an error."""
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise ValueError(f"FlashAttention-4 (ver=4) does not support: {', '.join(given)}")
    fa4 = _fa4_varlen()
    if isinstance(cache_seqlens, int):
        batch = q.shape[0] if cu_seqlens_q is None else cu_seqlens_q.numel() - 1
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    kwargs = dict(
        q=q, k=k_cache, v=v_cache, cu_seqlens_q=cu_seqlens_q, seqused_k=cache_seqlens, page_table=page_table,
        softmax_scale=softmax_scale, causal=causal,
        # FA4 spells an unbounded window side None rather than -1.
        window_size=tuple(None if w < 0 else w for w in window_size),
        softcap=softcap, num_splits=num_splits, pack_gqa=pack_gqa, learnable_sink=sinks,
        score_mod=score_mod, aux_tensors=aux_tensors,
    )
    # Releases name the LSE flag differently.
    lse_flag = "return_softmax_lse" if "return_softmax_lse" in inspect.signature(fa4).parameters else "return_lse"
    kwargs[lse_flag] = return_softmax_lse
    return fa4(**kwargs)
