"""The public signatures are part of the contract (SGLang calls positionally; transformers
inspects parameters by name). CPU only."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

KVCACHE_POSITIONAL = [
    "q", "k_cache", "v_cache", "k", "v", "qv", "rotary_cos", "rotary_sin", "cache_seqlens",
    "cache_batch_idx", "cache_leftpad", "page_table", "cu_seqlens_q", "cu_seqlens_k_new", "max_seqlen_q",
    "rotary_seqlens", "q_descale", "k_descale", "v_descale", "softmax_scale", "causal", "window_size",
    "attention_chunk", "softcap", "rotary_interleaved", "scheduler_metadata", "num_splits", "pack_gqa",
    "sm_margin", "return_softmax_lse", "sinks", "score_mod", "aux_tensors", "ver",
]
VARLEN_POSITIONAL = [
    "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "seqused_q", "seqused_k",
    "page_table", "softmax_scale", "causal", "qv", "q_descale", "k_descale", "v_descale", "window_size",
    "attention_chunk", "softcap", "num_splits", "pack_gqa", "sm_margin", "return_softmax_lse", "sinks",
    "score_mod", "aux_tensors", "ver",
]
KEYWORD_ONLY = ["s_aux", "out", "deterministic"]


def params(fn, kind):
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind == kind]


def test_kvcache_positional_order(fa3):
    assert params(fa3.flash_attn_with_kvcache, inspect.Parameter.POSITIONAL_OR_KEYWORD) == KVCACHE_POSITIONAL
    assert params(fa3.flash_attn_with_kvcache, inspect.Parameter.KEYWORD_ONLY) == KEYWORD_ONLY


def test_varlen_positional_order(fa3):
    assert params(fa3.flash_attn_varlen_func, inspect.Parameter.POSITIONAL_OR_KEYWORD) == VARLEN_POSITIONAL
    assert params(fa3.flash_attn_varlen_func, inspect.Parameter.KEYWORD_ONLY) == KEYWORD_ONLY


def test_dense_accepts_every_varlen_keyword(fa3):
    """transformers passes flash_attn_func the keywords it found on flash_attn_varlen_func."""
    dense = set(inspect.signature(fa3.flash_attn_func).parameters)
    varlen_only = {"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "seqused_q", "seqused_k", "page_table"}
    assert set(inspect.signature(fa3.flash_attn_varlen_func).parameters) - varlen_only <= dense


@pytest.mark.parametrize("name", ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "get_scheduler_metadata"])
def test_no_var_keyword(fa3, name):
    kinds = {p.kind for p in inspect.signature(getattr(fa3, name)).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds


def test_defaults_match_fa3(fa3):
    kv = inspect.signature(fa3.flash_attn_with_kvcache).parameters
    assert kv["num_splits"].default == 0 and kv["rotary_interleaved"].default is True and kv["ver"].default == 3
    assert kv["window_size"].default == (-1, -1) and kv["attention_chunk"].default is None
    vl = inspect.signature(fa3.flash_attn_varlen_func).parameters
    assert vl["num_splits"].default == 1 and vl["attention_chunk"].default == 0


def test_is_fa3_supported_without_gpu(fa3):
    import torch

    if not torch.cuda.is_available():
        assert fa3.is_fa3_supported() is False


def test_every_op_has_a_fake_kernel(fa3):
    """torch.compile needs a fake implementation for each registered op."""
    import torch

    from torch._library.simple_registry import singleton

    for name in ["fwd", "append_kv", "rotary_q"]:
        qualname = fa3._ops.add_op_namespace_prefix(name)
        assert singleton.find(qualname).fake_impl.kernel is not None, qualname


def test_generated_sources_are_current():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"sm90_bf16_d128\.cu", "without flash-attn3/instantiations/fwd_portable_bf16_d128.cu"),
        (r"no_such_kernel", "matches no instantiation source"),
    ],
)
def test_build_refuses_a_filter_it_could_not_load(pattern, message):
    """A filtered build that selects nothing, or a Hopper kernel without the portable kernel the
    binding finds it through, fails before compiling anything."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build.py"), "--filter", pattern],
                            capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_build_toml_describes_the_hub_package():
    config = tomllib.loads((ROOT / "build.toml").read_text())
    general = config["general"]
    assert (general["name"], general["version"], general["edition"], general["license"]) == (
        "sgl-flash-attn3", 1, 5, "BSD-3-Clause",
    )
    assert general["backends"] == ["cuda"] and general["hub"]["repo-id"] == "kernels-community/sgl-flash-attn3"
    for name, kernel in config["kernel"].items():
        assert kernel["backend"] == "cuda", name
        assert set(kernel["cuda-capabilities"]) <= {"8.0", "9.0a"}, name
        assert "torch" in kernel["depends"] and any(d.startswith("cutlass_4_") for d in kernel["depends"]), name
        for src in kernel["src"]:
            assert (ROOT / src).exists(), src
    for src in config["torch"]["src"]:
        assert (ROOT / src).exists(), src
