#!/usr/bin/env python3
"""Load sgl-flash-attn3 the way users do (kernels.get_kernel, here fully offline from a hub
cache staged from build/) and check one varlen call against the reference.

    python scripts/build.py && python scripts/readme_example.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / ".hub-cache"

# Offline: the hub cache below is the only place the kernel can come from.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(CACHE)
os.environ.pop("LOCAL_KERNELS", None)

import torch  # noqa: E402
from kernels import get_kernel  # noqa: E402


def main() -> int:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "stage_hub_cache.py"), "--cache", str(CACHE)], check=True)
    fa3 = get_kernel("kernels-community/sgl-flash-attn3", version=1)
    print(f"loaded {fa3.__name__} from {Path(fa3.__file__).parent}")
    if not torch.cuda.is_available():
        print("no CUDA GPU here: the kernel is loaded but not run")
        return 0

    torch.manual_seed(0)
    lengths = [1, 77, 512, 1000]  # four packed sequences
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total, heads, heads_kv, head_dim = sum(lengths), 32, 8, 128
    q = torch.randn(total, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16)

    out, lse = fa3.flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths), causal=True, return_softmax_lse=True
    )
    ref = fa3.attention_ref(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, causal=True)
    low = fa3.attention_ref(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, causal=True, upcast=False)
    err = (out.float() - ref.out).abs().max().item()
    bound = 2 * (low.out.float() - ref.out).abs().max().item()
    lse_err = (lse - ref.lse).abs().max().item()
    print(f"{torch.cuda.get_device_name()}: max |out - ref| = {err:.2e} (tolerance {bound:.2e}), max |lse - ref| = {lse_err:.2e}")
    ok = err <= bound and not torch.isnan(out).any()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
