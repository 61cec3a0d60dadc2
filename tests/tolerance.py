"""The tolerance rule: max|out - ref| <= factor * max|out_lowprec - ref| + floor.

`ref` is the float64 reference, `out_lowprec` the same reference computed in the input dtype,
floor = 2 * max|(ref + 0.3 - 0.3) - ref| (the rounding noise of the reference's own dtype).
NaN never passes; infinite entries (LSE of rows that see nothing) must match exactly.
"""

from __future__ import annotations

import torch


def assert_within_tolerance(
    name: str, out: torch.Tensor, ref: torch.Tensor, lowprec: torch.Tensor, factor: float = 2.0
) -> None:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out, ref, lowprec = out.float(), ref.float(), lowprec.float()
    assert not torch.isnan(out).any(), f"{name}: NaN in output"
    inf_out, inf_ref = torch.isinf(out), torch.isinf(ref)
    assert torch.equal(inf_out, inf_ref), f"{name}: infinite entries differ from the reference"
    assert torch.equal(out[inf_out], ref[inf_ref]), f"{name}: infinities of the wrong sign"
    finite = ~inf_ref
    if not finite.any():
        return
    o, r, lp = out[finite], ref[finite], lowprec[finite]
    floor = 2 * ((r + 0.3 - 0.3) - r).abs().max().item()
    bound = factor * (lp - r).abs().max().item() + floor
    err = (o - r).abs().max().item()
    assert err <= bound, f"{name}: max error {err:.3e} exceeds bound {bound:.3e}"


def poisoned_like(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN, so that any element the kernel skips fails the check."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def check_against_ref(fa3, name, out, lse, ref_kwargs, q, k, v, factor=2.0):
    """O and LSE of a kernel call against attention_ref (float64) under the tolerance rule; returns
    the reference result (it also holds the cache after any append)."""
    ref = fa3.attention_ref(q, k, v, **ref_kwargs)
    low = fa3.attention_ref(q, k, v, upcast=False, **ref_kwargs)
    assert_within_tolerance(f"{name} out", out, ref.out, low.out, factor)
    assert_within_tolerance(f"{name} lse", lse, ref.lse, low.lse, factor)
    return ref
