"""The one table of compiled kernels.

It drives the generated instantiation sources (`scripts/generate.py` writes
`flash-attn3/instantiations/*.cu` and the matching `src` list of `build.toml`), the
Python-side support checks, and the test grid. Anything not listed here is not compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE_NAMES: dict[torch.dtype, str] = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_CXX_ELEMENT = {"fp16": "__half", "bf16": "__nv_bfloat16"}


@dataclass(frozen=True)
class Instantiation:
    family: str  # "portable": mma.sync + cp.async (sm80 and newer); "sm90": TMA + wgmma (sm90a)
    dtype: str  # "fp16" | "bf16"
    head_dim: int
    head_dim_v: int

    @property
    def name(self) -> str:
        dv = "" if self.head_dim_v == self.head_dim else f"_dv{self.head_dim_v}"
        return f"fwd_{self.family}_{self.dtype}_d{self.head_dim}{dv}"

    @property
    def source(self) -> str:
        return f"flash-attn3/instantiations/{self.name}.cu"

    @property
    def cxx_element(self) -> str:
        return _CXX_ELEMENT[self.dtype]


# (d, dv) pairs: equal dims, DeepSeek-style 192 -> 128, and absorbed-MLA 64 -> 256 / 512 (qv).
HEAD_DIM_PAIRS: tuple[tuple[int, int], ...] = (
    (64, 64), (96, 96), (128, 128), (192, 192), (256, 256), (192, 128), (64, 256), (64, 512),
)

# The Hopper family covers prefill (dense, packed or paged k/v, GQA heads packed or not) for every
# pair (absorbed MLA 64 -> 256 / 512 with qv on its own tile); decode and GQA-packed short queries
# run on the portable family.
SM90_HEAD_DIM_PAIRS: tuple[tuple[int, int], ...] = HEAD_DIM_PAIRS

DTYPES: tuple[str, ...] = ("fp16", "bf16")

INSTANTIATIONS: tuple[Instantiation, ...] = tuple(
    Instantiation("portable", dtype, d, dv) for dtype in DTYPES for d, dv in HEAD_DIM_PAIRS
) + tuple(Instantiation("sm90", dtype, d, dv) for dtype in DTYPES for d, dv in SM90_HEAD_DIM_PAIRS)

SUPPORTED_HEAD_DIMS: tuple[int, ...] = tuple(sorted({i.head_dim for i in INSTANTIATIONS}))


def find(dtype: torch.dtype, head_dim: int, head_dim_v: int, family: str = "portable") -> Instantiation | None:
    """The instantiation of `family` for these dims (the portable family covers every pair)."""
    name = DTYPE_NAMES.get(dtype)
    for inst in INSTANTIATIONS:
        if (inst.family, inst.dtype, inst.head_dim, inst.head_dim_v) == (family, name, head_dim, head_dim_v):
            return inst
    return None
