"""attention_ref against a naive per-query-row loop written straight from the semantics (CPU)."""

from __future__ import annotations

import math

import pytest
import torch


def naive_attention(
    q, k_rows, v_rows, *, scale, causal=False, window=(-1, -1), chunk=0, softcap=0.0, sink=None, qv=None,
    qk_scale=1.0, v_scale=1.0,
):
    """One batch row, one query head. q (sq, d), k_rows/v_rows (sk, .): plain Python loops."""
    sq, sk = q.shape[0], k_rows.shape[0]
    wl, wr = window
    if causal:
        wr = 0
    outs, lses = [], []
    for i in range(sq):
        p = i + sk - sq
        logits = []
        for j in range(sk):
            visible = (wl < 0 or j >= p - wl) and (wr < 0 or j <= p + wr)
            if chunk > 0:
                c0 = math.floor(p / chunk) * chunk
                visible = visible and c0 <= j < c0 + chunk
            if not visible:
                continue
            dot = float(q[i] @ k_rows[j]) * qk_scale
            if qv is not None:
                dot += float(qv[i] @ v_rows[j])
            s = scale * dot
            if softcap > 0:
                s = softcap * math.tanh(s / softcap)
            logits.append((j, s))
        terms = [s for _, s in logits] + ([sink] if sink is not None else [])
        if not terms:
            outs.append(torch.zeros(v_rows.shape[1], dtype=torch.float64))
            lses.append(float("-inf"))
            continue
        m = max(terms)
        denom = sum(math.exp(t - m) for t in terms)
        o = torch.zeros(v_rows.shape[1], dtype=torch.float64)
        for j, s in logits:
            o += math.exp(s - m) / denom * v_rows[j].double() * v_scale
        outs.append(o)
        lses.append(m + math.log(denom))
    return torch.stack(outs) if outs else torch.zeros(0, v_rows.shape[1], dtype=torch.float64), lses


def rng(*shape):
    return torch.randn(*shape, dtype=torch.float64)


MASKS = [
    dict(),
    dict(causal=True),
    dict(window=(3, 1)),
    dict(causal=True, window=(4, 4)),
    dict(chunk=4),
    dict(causal=True, chunk=3),
    dict(softcap=2.0),
]


@pytest.mark.parametrize("mask", MASKS, ids=[str(m) for m in MASKS])
@pytest.mark.parametrize("sq,sk", [(1, 1), (5, 9), (9, 5), (7, 7), (3, 0)])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_dense_matches_naive(fa3, mask, sq, sk, with_sinks):
    torch.manual_seed(sq * 31 + sk)
    b, h, h_k, d = 2, 4, 2, 8
    q, k, v = rng(b, sq, h, d), rng(b, sk, h_k, d), rng(b, sk, h_k, 6)
    sinks = rng(h) if with_sinks else None
    res = fa3.attention_ref(
        q, k, v, causal=mask.get("causal", False), window_size=mask.get("window", (-1, -1)),
        attention_chunk=mask.get("chunk", 0), softcap=mask.get("softcap", 0.0), sinks=sinks,
    )
    assert res.out.shape == (b, sq, h, 6) and res.lse.shape == (b, h, sq)
    for bi in range(b):
        for hi in range(h):
            o, lse = naive_attention(
                q[bi, :, hi], k[bi, :, hi // 2], v[bi, :, hi // 2], scale=d**-0.5,
                sink=None if sinks is None else float(sinks[hi]), **mask,
            )
            torch.testing.assert_close(res.out[bi, :, hi].double(), o, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(res.lse[bi, hi].double(), torch.tensor(lse, dtype=torch.float64), atol=1e-5, rtol=1e-6)


def test_fully_masked_rows_are_zero_not_nan(fa3):
    q, k, v = rng(1, 6, 2, 8), rng(1, 2, 2, 8), rng(1, 2, 2, 8)
    res = fa3.attention_ref(q, k, v, causal=True)
    assert torch.equal(res.out[0, :4], torch.zeros(4, 2, 8, dtype=res.out.dtype))
    assert torch.isneginf(res.lse[0, :, :4]).all()
    sinks = rng(2)
    res = fa3.attention_ref(q, k, v, causal=True, sinks=sinks)
    torch.testing.assert_close(res.lse[0, :, 0], sinks.float())


def test_varlen_seqused_leftpad_batch_idx(fa3):
    torch.manual_seed(1)
    lens_q, lens_k = [3, 0, 5], [4, 6, 2]
    cu_q = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 10, 12], dtype=torch.int32)
    q, k, v = rng(8, 2, 8), rng(12, 1, 8), rng(12, 1, 8)
    used_q = torch.tensor([2, 0, 5], dtype=torch.int32)
    used_k = torch.tensor([4, 3, 2], dtype=torch.int32)
    res = fa3.attention_ref(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, seqused_q=used_q, seqused_k=used_k, causal=True)
    assert res.lse.shape == (2, 8)
    for b in range(3):
        qs, ks = int(cu_q[b]), int(cu_k[b])
        for h in range(2):
            o, lse = naive_attention(
                q[qs : qs + int(used_q[b]), h], k[ks : ks + int(used_k[b]), 0], v[ks : ks + int(used_k[b]), 0],
                scale=8**-0.5, causal=True,
            )
            torch.testing.assert_close(res.out[qs : qs + int(used_q[b]), h].double(), o)
        # Rows past seqused_q see nothing.
        assert (res.out[qs + int(used_q[b]) : int(cu_q[b + 1])] == 0).all()
    # cache_batch_idx + cache_leftpad on a dense cache.
    kc, vc = rng(3, 7, 1, 8), rng(3, 7, 1, 8)
    qd = rng(2, 2, 1, 8)
    idx, pad, seqlens = (torch.tensor(x, dtype=torch.int32) for x in ([2, 0], [1, 3], [5, 7]))
    res = fa3.attention_ref(qd, kc, vc, seqused_k=seqlens, cache_batch_idx=idx, cache_leftpad=pad)
    for b in range(2):
        c = int(idx[b])
        o, _ = naive_attention(qd[b, :, 0], kc[c, int(pad[b]) : int(seqlens[b]), 0], vc[c, int(pad[b]) : int(seqlens[b]), 0], scale=8**-0.5)
        torch.testing.assert_close(res.out[b, :, 0].double(), o)


def naive_rotary(x, cos, sin, pos, interleaved):
    x = x.clone()
    half = cos.shape[1]
    for pair in range(half):
        a, b = (2 * pair, 2 * pair + 1) if interleaved else (pair, pair + half)
        c, s = float(cos[pos, pair]), float(sin[pos, pair])
        xa, xb = x[..., a].clone(), x[..., b].clone()
        x[..., a], x[..., b] = xa * c - xb * s, xa * s + xb * c
    return x


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
def test_append_with_rotary(fa3, paged, interleaved):
    torch.manual_seed(2)
    b, h, d, sn, sq = 2, 2, 8, 3, 3
    cache_lens = torch.tensor([2, 5], dtype=torch.int32)
    cos, sin = rng(16, 2), rng(16, 2)  # rotary_dim 4 of d 8
    q, k_new, v_new = rng(b, sq, h, d), rng(b, sn, 1, d), rng(b, sn, 1, d)
    if paged:
        ps = 4
        k, v = rng(6, ps, 1, d), rng(6, ps, 1, d)
        table = torch.tensor([[5, 1], [0, 3]], dtype=torch.int32)

        def slot(t, bi, s):
            return t[int(table[bi, s // ps]), s % ps]
    else:
        k, v = rng(b, 10, 1, d), rng(b, 10, 1, d)
        table = None

        def slot(t, bi, s):
            return t[bi, s]
    res = fa3.attention_ref(
        q, k, v, seqused_k=cache_lens, page_table=table, k_new=k_new, v_new=v_new, rotary_cos=cos,
        rotary_sin=sin, rotary_interleaved=interleaved, causal=True,
    )
    for bi in range(b):
        n = int(cache_lens[bi])
        keys, vals = [], []
        for s in range(n + sn):
            if s < n:
                kk, vv = slot(k, bi, s), slot(v, bi, s)
            else:
                kk = naive_rotary(k_new[bi, s - n], cos, sin, s, interleaved)
                vv = v_new[bi, s - n]
                torch.testing.assert_close(slot(res.k_cache, bi, s), kk)
                torch.testing.assert_close(slot(res.v_cache, bi, s), vv)
            keys.append(kk[0])
            vals.append(vv[0])
        qr = torch.stack([naive_rotary(q[bi, i], cos, sin, n + i, interleaved) for i in range(sq)])
        for hi in range(h):
            o, _ = naive_attention(qr[:, hi], torch.stack(keys), torch.stack(vals), scale=d**-0.5, causal=True)
            torch.testing.assert_close(res.out[bi, :, hi].double(), o)
    # Nothing outside the appended slots changed.
    changed = (res.k_cache != k).any(dim=(-1, -2))
    assert int(changed.sum()) == b * sn


def test_qv_and_fp8_descale(fa3):
    torch.manual_seed(4)
    b, sq, sk, h, h_k = 2, 3, 5, 2, 1
    q, k, v, qv = rng(b, sq, h, 8), rng(b, sk, h_k, 8), rng(b, sk, h_k, 16), rng(b, sq, h, 16)
    qd, kd, vd = (torch.rand(b, h_k, dtype=torch.float64) + 0.5 for _ in range(3))
    res = fa3.attention_ref(q, k, v, qv=qv, q_descale=qd, k_descale=kd, v_descale=vd)
    for bi in range(b):
        for hi in range(h):
            o, lse = naive_attention(
                q[bi, :, hi], k[bi, :, 0], v[bi, :, 0], qv=qv[bi, :, hi], scale=(8 + 16) ** -0.5,
                qk_scale=float(qd[bi, 0] * kd[bi, 0]), v_scale=float(vd[bi, 0]),
            )
            torch.testing.assert_close(res.out[bi, :, hi].double(), o)


def test_lowprec_mode_is_close_but_not_exact(fa3):
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 40, 2, 64, dtype=torch.bfloat16) for _ in range(3))
    hi, lo = fa3.attention_ref(q, k, v), fa3.attention_ref(q, k, v, upcast=False)
    assert lo.out.dtype == torch.bfloat16 and hi.out.dtype == torch.float32
    err = (lo.out.float() - hi.out).abs().max().item()
    assert 0 < err < 0.05
