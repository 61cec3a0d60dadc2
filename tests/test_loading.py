"""The three ways users load the package, each in a fresh interpreter (CPU is enough)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "kernels-community/sgl-flash-attn3"
PROBE = """
import kernels
from pathlib import Path
kernel = {load}
assert callable(kernel.flash_attn_varlen_func) and callable(kernel.flash_attn_with_kvcache)
assert kernel._ops.add_op_namespace_prefix("fwd").startswith("_sgl_flash_attn3_cuda_")
print(kernel.__file__)
"""


def load_in_subprocess(load_expr: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("LOCAL_KERNELS", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(load=load_expr)], capture_output=True, text=True,
        env={**environ, **env}, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_get_local_kernel():
    path = load_in_subprocess(f"kernels.get_local_kernel(Path({str(ROOT / 'build')!r}))")
    assert path.startswith(str(ROOT / "build"))


def test_local_kernels_override():
    path = load_in_subprocess(f"kernels.get_kernel({REPO_ID!r}, version=1)", LOCAL_KERNELS=f"{REPO_ID}={ROOT}")
    assert path.startswith(str(ROOT / "build"))


def test_offline_hub_cache(tmp_path):
    staged = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stage_hub_cache.py"), "--cache", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert staged.returncode == 0, staged.stderr
    path = load_in_subprocess(
        f"kernels.get_kernel({REPO_ID!r}, version=1)", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path)
    )
    assert path.startswith(str(tmp_path / "kernels--kernels-community--sgl-flash-attn3" / "snapshots"))
    assert (tmp_path / "kernels--kernels-community--sgl-flash-attn3" / "refs" / "v1").read_text()


def test_build_layout_matches_kernel_builder():
    import json

    variants = [p for p in (ROOT / "build").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert [p.name for p in variants] == ["torch-stable-abi29-cu130-x86_64-linux"]
    variant = variants[0]
    metadata = json.loads((variant / "metadata.json").read_text())
    assert metadata["name"] == "sgl-flash-attn3" and metadata["version"] == 1
    assert metadata["license"] == "BSD-3-Clause" and metadata["backend"]["type"] == "cuda"
    assert metadata["id"].startswith("_sgl_flash_attn3_cuda_")
    assert (variant / f"{metadata['id']}.abi3.so").exists()
    ops_py = (variant / "_ops.py").read_text()
    assert f"ops = torch.ops.{metadata['id']}" in ops_py and "def add_op_namespace_prefix" in ops_py
    assert (variant / "__init__.py").exists()
