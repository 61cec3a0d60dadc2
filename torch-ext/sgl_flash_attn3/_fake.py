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
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    seqused_q: torch.Tensor | None,
    seqused_k: torch.Tensor | None,
    kv_batch_idx: torch.Tensor | None,
    leftpad_k: torch.Tensor | None,
    sinks: torch.Tensor | None,
    max_seqlen_q: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    attention_chunk: int,
    softcap: float,
) -> None:
    # `out` and `softmax_lse` are written in place; nothing is returned.
    return None
