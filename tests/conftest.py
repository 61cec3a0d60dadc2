"""Shared fixtures: the built kernel package (loaded the way users load it) and GPU gating."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def fa3():
    """The sgl_flash_attn3 module from build/, through kernels.get_local_kernel."""
    from kernels import get_local_kernel

    build = ROOT / "build"
    if not any(p.name.startswith("torch") for p in build.glob("*")):
        pytest.fail("build/ has no variant: run `python scripts/build.py` first")
    return get_local_kernel(build)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
