"""Fake (meta) implementations so that torch.compile traces the ops without graph breaks."""

from __future__ import annotations

import torch

from ._ops import add_op_namespace_prefix


@torch.library.register_fake(add_op_namespace_prefix("fwd"))
def _fwd_fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    qv: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    seqused_q: torch.Tensor | None,
    seqused_k: torch.Tensor | None,
    kv_batch_idx: torch.Tensor | None,
    leftpad_k: torch.Tensor | None,
    cu_seqlens_k_new: torch.Tensor | None,
    seqlen_k_new: int,
    page_table: torch.Tensor | None,
    sinks: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    attention_chunk: int,
    softcap: float,
    num_splits: int,
    pack_gqa: int,
    n_blocks_per_split: int,
    deterministic: bool,
    sm_margin: int,
) -> None:
    # `out` and `softmax_lse` are written in place; nothing is returned.
    return None


@torch.library.register_fake(add_op_namespace_prefix("append_kv"))
def _append_kv_fake(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_seqlens: torch.Tensor,
    cache_batch_idx: torch.Tensor | None,
    cu_seqlens_k_new: torch.Tensor | None,
    page_table: torch.Tensor | None,
    rotary_cos: torch.Tensor | None,
    rotary_sin: torch.Tensor | None,
    rotary_seqlens: torch.Tensor | None,
    rotary_interleaved: bool,
) -> None:
    # The caches are written in place.
    return None


@torch.library.register_fake(add_op_namespace_prefix("rotary_q"))
def _rotary_q_fake(
    q: torch.Tensor,
    q_rot: torch.Tensor,
    cache_seqlens: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    max_seqlen_q: int,
    rotary_cos: torch.Tensor,
    rotary_sin: torch.Tensor,
    rotary_seqlens: torch.Tensor | None,
    rotary_interleaved: bool,
    per_row: bool,
) -> None:
    # q_rot is written in place.
    return None
