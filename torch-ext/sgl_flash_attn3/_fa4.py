"""ver=4: hand a call to FlashAttention-4 (package flash-attn-4, module flash_attn.cute) when it
is installed, the way sgl_kernel does; a clear error otherwise."""

from __future__ import annotations

import importlib
import inspect

import torch


def call_fa4_varlen(kwargs: dict[str, object], unsupported: dict[str, object]) -> object:
    """Calls flash_attn.cute.flash_attn_varlen_func(**kwargs) in FA4's conventions.

    `unsupported` maps arguments FA4 lacks to the caller's values; any that is set is an error.
    kwargs use our names: window_size with -1 for an unbounded side, sinks, return_softmax_lse.
    """
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise ValueError(f"FlashAttention-4 (ver=4) does not support: {', '.join(given)}")
    try:
        fa4 = importlib.import_module("flash_attn.cute").flash_attn_varlen_func
    except ImportError as e:
        raise ImportError(
            "ver=4 hands the call to FlashAttention-4, which is not installed (pip install flash-attn-4)"
        ) from e
    call = dict(kwargs)
    # FA4 spells an unbounded window side None, calls the sinks learnable_sink, and names the
    # LSE flag differently across releases.
    call["window_size"] = tuple(None if w < 0 else w for w in call.pop("window_size"))
    call["learnable_sink"] = call.pop("sinks")
    return_lse = call.pop("return_softmax_lse")
    lse_flag = "return_softmax_lse" if "return_softmax_lse" in inspect.signature(fa4).parameters else "return_lse"
    call[lse_flag] = return_lse
    return fa4(**call)


def cache_seqlens_tensor(cache_seqlens: torch.Tensor | int | None, batch: int, device: torch.device):
    """An int cache_seqlens means the same length for every batch row."""
    if isinstance(cache_seqlens, int):
        return torch.full((batch,), cache_seqlens, dtype=torch.int32, device=device)
    return cache_seqlens
