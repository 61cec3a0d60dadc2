"""Workloads for `kernels benchmark` (timing plus a check against PyTorch's math SDPA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kernels.benchmark import Benchmark
from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa_reference(q, k, v, causal):
    """q (b, sq, h, d), k/v (b, sk, h_k, d) -> (b, sq, h, d), GQA by repeating kv heads."""
    group = q.shape[2] // k.shape[2]
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    with sdpa_kernel(SDPBackend.MATH):
        mask = None
        if causal:  # bottom-right aligned, as in FlashAttention
            sq, sk = q.shape[2], k.shape[2]
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


class SglFlashAttn3Benchmark(Benchmark):
    seed = 0

    # Prefill: 4 x 2048 tokens, 16 heads of 128, causal.
    def setup_prefill(self):
        shape = (4, 2048, 16, 128)
        self.q, self.k, self.v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        self.out = torch.empty(shape, device="cuda", dtype=torch.bfloat16)

    def benchmark_prefill(self):
        self.kernel.flash_attn_func(self.q, self.k, self.v, causal=True, out=self.out)

    def verify_prefill(self):
        return sdpa_reference(self.q, self.k, self.v, causal=True).to(self.out.dtype)

    # Decode: 32 sequences x 4096 cached keys, GQA 32/8, d 128.
    def setup_decode(self):
        self.q = torch.randn(32, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
        self.k = torch.randn(32, 4096, 8, 128, device="cuda", dtype=torch.bfloat16)
        self.v = torch.randn(32, 4096, 8, 128, device="cuda", dtype=torch.bfloat16)
        self.out = torch.empty_like(self.q)

    def benchmark_decode(self):
        self.kernel.flash_attn_with_kvcache(self.q, self.k, self.v, cache_seqlens=4096, causal=True, out=self.out)

    def verify_decode(self):
        return sdpa_reference(self.q, self.k, self.v, causal=True).to(self.out.dtype)
