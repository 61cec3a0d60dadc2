"""Positional arguments of the raw `fwd` op, for tests that bypass the Python checks."""

from __future__ import annotations

import torch


def fwd_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> list:
    """A dense, non-causal call with every optional input absent."""
    return [
        q, k, v, out, lse,
        None, None, None, None, None, None, None,  # qv, cu_seqlens_q/k, seqused_q/k, kv_batch_idx, leftpad_k
        None, 0, None, None,  # cu_seqlens_k_new, seqlen_k_new, page_table, sinks
        q.shape[1], k.shape[1], 0.125, -1, -1, 0, 0.0,  # max_seqlen_q/k, scale, window, chunk, softcap
        1, -1, 0, False, 0,  # num_splits, pack_gqa, n_blocks_per_split, deterministic, sm_margin
    ]
