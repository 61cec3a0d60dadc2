"""transformers runs our kernel for `attn_implementation="kernels-community/sgl-flash-attn3"`.

Pins: transformers 5.22.2 with kernels 0.17.2 (the module is skipped with any other transformers).
The repo id resolves through `LOCAL_KERNELS` to this checkout's `build/`, never the Hub.

For tiny randomly initialised models in bf16, checked against transformers' eager attention on
the same weights and inputs:
- transformers' flash path holds our `flash_attn_func` / `flash_attn_varlen_func` and calls one of
  them once per layer: the dense one for an unpadded batch, the varlen one for a padded batch;
- gpt-oss (attention sinks, alternating sliding-window / full layers, GQA, head dim 64) keeps our
  implementation once the repo id is in `_compatible_flash_implementations` (otherwise it swaps
  in another kernel), and every call receives the sinks as `s_aux` and, on sliding layers, the
  window as `window_size=(w - 1, w - 1)`;
- Llama (GQA, head dim 128) with left and right padding;
- logits on non-padded positions: max|ours - eager_fp32| <= 2 * max|eager_bf16 - eager_fp32| + floor
  (`tolerance.assert_within_tolerance`), and no NaN or inf anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tolerance import assert_within_tolerance

TRANSFORMERS_VERSION = "5.22.2"
transformers = pytest.importorskip(
    "transformers", reason=f"needs transformers=={TRANSFORMERS_VERSION} (pinned with kernels 0.17.2)"
)
if transformers.__version__ != TRANSFORMERS_VERSION:
    pytest.skip(
        f"needs transformers=={TRANSFORMERS_VERSION} (pinned with kernels 0.17.2), found {transformers.__version__}",
        allow_module_level=True,
    )

import kernels
from transformers import AutoModelForCausalLM, GptOssConfig, LlamaConfig, PreTrainedConfig, PreTrainedModel
from transformers import modeling_flash_attention_utils as flash_utils
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssPreTrainedModel

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "kernels-community/sgl-flash-attn3"
DEVICE = "cuda"
SEQLEN = 40
SLIDING_WINDOW = 16
# Weight std: larger than the default 0.02, so that attention is far from uniform and a wrong softmax
# scale, mask, sink or head mapping moves the logits well past the bf16 tolerance.
ATTENTION_INIT_STD = 0.05


@dataclass
class KernelCalls:
    """Keyword arguments of each call transformers made to our kernel, in call order."""

    dense: list[dict[str, object]] = field(default_factory=list)
    varlen: list[dict[str, object]] = field(default_factory=list)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Our package, as kernels resolves REPO_ID with LOCAL_KERNELS pointing at this checkout.

    kernels caches the parse of LOCAL_KERNELS keyed by the variable's value, so setting it here
    takes effect even after an earlier parse; kernels also caches the imported module by build
    path, so transformers gets this very module object when it resolves REPO_ID.
    """
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={ROOT}")
    module = kernels.get_kernel(REPO_ID, version=1)
    assert Path(module.__file__).is_relative_to(ROOT / "build"), f"{REPO_ID} resolved to {module.__file__}"
    return module


def record_calls(monkeypatch: pytest.MonkeyPatch, kernel: ModuleType) -> KernelCalls:
    """Checks that transformers' flash path holds `kernel`'s functions, then records every call to them.

    transformers resolves the implementation when a model is built and keeps the functions in
    module globals of `modeling_flash_attention_utils` that each attention call reads.
    """
    assert flash_utils._loaded_implementation == REPO_ID
    assert flash_utils._flash_fn is kernel.flash_attn_func
    assert flash_utils._flash_varlen_fn is kernel.flash_attn_varlen_func
    calls = KernelCalls()

    def recorded(fn: Callable[..., torch.Tensor], log: list[dict[str, object]]) -> Callable[..., torch.Tensor]:
        def call(*args: object, **kwargs: object) -> torch.Tensor:
            log.append(kwargs)
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(flash_utils, "_flash_fn", recorded(kernel.flash_attn_func, calls.dense))
    monkeypatch.setattr(flash_utils, "_flash_varlen_fn", recorded(kernel.flash_attn_varlen_func, calls.varlen))
    return calls


def build(
    config: PreTrainedConfig, attn_implementation: str, dtype: torch.dtype, weights: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """A model on DEVICE in eval mode; building it resolves (and for a repo id, loads) the attention."""
    # from_config writes the implementation into the config it is given, and the model keeps that object.
    model = AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation=attn_implementation, dtype=dtype
    )
    model.load_state_dict(weights)
    return model.to(DEVICE).eval()


def random_weights(config: PreTrainedConfig) -> dict[str, torch.Tensor]:
    """Seeded fp32 initial weights, shared by every implementation under comparison."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32).state_dict()


def padded_batch(
    vocab_size: int, lengths: list[int], padding_side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (batch, SEQLEN) and the 0/1 attention mask of sequences of `lengths`."""
    torch.manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (len(lengths), SEQLEN), device=DEVICE)
    positions = torch.arange(SEQLEN, device=DEVICE)
    lengths_t = torch.tensor(lengths, device=DEVICE)[:, None]
    real = positions >= SEQLEN - lengths_t if padding_side == "left" else positions < lengths_t
    return input_ids, real.long()


def logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()


def assert_logits_match_eager(
    config: PreTrainedConfig, ours: PreTrainedModel, weights: dict[str, torch.Tensor],
    input_ids: torch.Tensor, attention_mask: torch.Tensor,
) -> None:
    """Our model's logits against eager in bf16 and fp32 on the same weights, on non-padded positions."""
    out = logits(ours, input_ids, attention_mask)
    assert torch.isfinite(out).all(), "non-finite logits with our kernel"
    eager_bf16 = logits(build(config, "eager", torch.bfloat16, weights), input_ids, attention_mask)
    eager_fp32 = logits(build(config, "eager", torch.float32, weights), input_ids, attention_mask)
    real = attention_mask.bool()
    assert_within_tolerance("logits", out[real], eager_fp32[real], eager_bf16[real])


@pytest.mark.parametrize(
    "lengths", [[SEQLEN, SEQLEN], [SEQLEN, 23]], ids=["unpadded-dense", "left-padded-varlen"]
)
def test_gpt_oss_sinks_and_sliding_window(
    kernel: ModuleType, monkeypatch: pytest.MonkeyPatch, lengths: list[int]
) -> None:
    """gpt-oss runs on our kernel (not a swapped-in one) with s_aux and window_size, and matches eager."""
    config = GptOssConfig(
        vocab_size=256, hidden_size=128, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        num_local_experts=2, num_experts_per_tok=2,  # every expert on every token: no routing flips
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=SEQLEN,
        initializer_range=ATTENTION_INIT_STD,
    )
    monkeypatch.setattr(
        GptOssPreTrainedModel, "_compatible_flash_implementations",
        [*GptOssPreTrainedModel._compatible_flash_implementations, REPO_ID],
    )
    weights = random_weights(config)
    ours = build(config, REPO_ID, torch.bfloat16, weights)
    assert ours.config._attn_implementation == REPO_ID, "gpt-oss swapped in another flash implementation"
    calls = record_calls(monkeypatch, kernel)
    input_ids, attention_mask = padded_batch(config.vocab_size, lengths, "left")

    assert_logits_match_eager(config, ours, weights, input_ids, attention_mask)
    padded = min(lengths) < SEQLEN
    used, unused = (calls.varlen, calls.dense) if padded else (calls.dense, calls.varlen)
    assert unused == []
    assert [c.get("window_size") for c in used] == [
        (SLIDING_WINDOW - 1, SLIDING_WINDOW - 1) if t == "sliding_attention" else None for t in config.layer_types
    ]
    assert all(c["causal"] is True and isinstance(c.get("s_aux"), torch.Tensor) for c in used)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_llama_padded_batch(kernel: ModuleType, monkeypatch: pytest.MonkeyPatch, padding_side: str) -> None:
    """A padded Llama batch goes through our flash_attn_varlen_func on every layer and matches eager."""
    config = LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=SEQLEN,
        initializer_range=ATTENTION_INIT_STD,
    )
    weights = random_weights(config)
    ours = build(config, REPO_ID, torch.bfloat16, weights)
    calls = record_calls(monkeypatch, kernel)
    input_ids, attention_mask = padded_batch(config.vocab_size, [SEQLEN, 27, 9], padding_side)

    assert_logits_match_eager(config, ours, weights, input_ids, attention_mask)
    assert len(calls.varlen) == config.num_hidden_layers and calls.dense == []
    assert all(c["causal"] is True and "window_size" not in c for c in calls.varlen)
