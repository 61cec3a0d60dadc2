"""Argument checks with errors that name the argument and what was expected.

Shape, dtype and combination checks come before the device check, so that every rule can be
exercised (and tested) with CPU tensors; the device check is the last gate before a launch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _instantiations

ATTN_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def not_implemented(feature: str) -> NotImplementedError:
    return NotImplementedError(f"{feature} is not implemented in this version of sgl_flash_attn3")


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(t.dtype).removeprefix('torch.')}")
    if shape is not None:
        if t.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t


def check_attn_layout(name: str, t: torch.Tensor) -> None:
    """Only the last dimension must be contiguous; other strides are free (16-byte multiples)."""
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")
    align = 16 // t.element_size()
    for i in range(t.dim() - 1):
        if t.shape[i] > 1 and t.stride(i) % align != 0:
            raise ValueError(
                f"{name}.stride({i}) = {t.stride(i)} must be a multiple of {align} elements (16 bytes)"
            )
    # Addresses do not exist while torch.compile traces; the op itself re-checks them at run time.
    if not torch.compiler.is_compiling() and t.data_ptr() % 16 != 0:
        raise ValueError(f"{name} must start at a 16-byte aligned address")


def check_int_vector(name: str, t: object, length: int) -> torch.Tensor:
    check_tensor(name, t, dtypes=(torch.int32,), shape=(length,))
    return t.contiguous()


def check_window(window_size: object) -> tuple[int, int]:
    if (
        not isinstance(window_size, (tuple, list))
        or len(window_size) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in window_size)
    ):
        raise TypeError(f"window_size must be a pair of ints (left, right), got {window_size!r}")
    left, right = window_size
    if left < -1 or right < -1:
        raise ValueError(f"window_size entries must be >= -1 (-1 = unbounded), got {window_size!r}")
    return left, right


def check_scalar(name: str, value: object, kind: type, minimum: float | None = None) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise TypeError(f"{name} must be {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_head_dims(q: torch.Tensor, head_dim: int, head_dim_v: int) -> None:
    if _instantiations.find(q.dtype, head_dim, head_dim_v) is None:
        pairs = ", ".join(f"{d}->{dv}" if d != dv else str(d) for d, dv in _instantiations.HEAD_DIM_PAIRS)
        raise NotImplementedError(
            f"head dim {head_dim} (v head dim {head_dim_v}) with dtype "
            f"{str(q.dtype).removeprefix('torch.')} is not implemented; supported head dims: {pairs}"
        )


def check_heads(num_heads: int, num_heads_k: int) -> None:
    if num_heads_k <= 0 or num_heads % num_heads_k != 0:
        raise ValueError(
            f"the number of query heads ({num_heads}) must be a multiple of the number of "
            f"key/value heads ({num_heads_k})"
        )


def check_sinks(sinks: torch.Tensor | None, s_aux: torch.Tensor | None, num_heads: int) -> torch.Tensor | None:
    if sinks is not None and s_aux is not None:
        raise ValueError("pass attention sinks as either sinks= or s_aux=, not both")
    name, value = ("s_aux", s_aux) if s_aux is not None else ("sinks", sinks)
    if value is None:
        return None
    check_tensor(name, value, dtypes=FLOAT_DTYPES, shape=(num_heads,))
    return value


def check_device(q: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    if q.device.type != "cuda":
        raise ValueError(f"q must be a CUDA tensor, got device {q.device}")
    for name, t in tensors.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} must be on {q.device} like q, got {t.device}")
