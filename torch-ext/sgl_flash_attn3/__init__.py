"""sgl_flash_attn3: forward-only FlashAttention-3-compatible attention for LLM inference."""

from . import _fake  # noqa: F401  (registers fake kernels for torch.compile)
from .interface import (
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    get_scheduler_metadata,
    is_fa3_supported,
)
from .reference import attention_ref

__all__ = [
    "attention_ref",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "get_scheduler_metadata",
    "is_fa3_supported",
]
