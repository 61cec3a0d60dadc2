"""attention_ref: the semantics of every kernel, written literally in torch (no tiling).

One batch row at a time: gather its keys (dense, packed or paged), append new keys (with
rotary), drop the left padding, then build the visibility mask from the formulas
(bottom-right aligned causal / window / chunk), apply softcap, sinks and softmax.

`upcast=True` computes in float64 (the ground truth); `upcast=False` computes the way a
low-precision kernel would (products in the input dtype, softmax in float32, P rounded to the
input dtype) and serves as the yardstick for the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RefResult:
    out: torch.Tensor  # layout of q, last dim dv; float32 when upcast, else the input dtype
    lse: torch.Tensor  # float32, (b, h, sq) or (h, total_q) when cu_seqlens_q is given
    k_cache: torch.Tensor | None  # cache after the in-place append (None without k_new)
    v_cache: torch.Tensor | None


def visible_mask(
    sq: int, sk: int, *, causal: bool, window_size: tuple[int, int], attention_chunk: int, device=None
) -> torch.Tensor:
    """(sq, sk) bool: query row i (at key position p = i + sk - sq) sees key j."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    p = i + sk - sq
    left, right = window_size
    if causal:
        right = 0
    vis = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        vis &= j >= p - left
    if right >= 0:
        vis &= j <= p + right
    if attention_chunk and attention_chunk > 0:
        c0 = torch.div(p, attention_chunk, rounding_mode="floor") * attention_chunk
        vis &= (j >= c0) & (j < c0 + attention_chunk)
    return vis


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x (n, heads, d) rotated at `positions` (n,); rotary_dim = 2 * cos.shape[1]."""
    half = cos.shape[1]
    rd = 2 * half
    c = cos[positions].to(x.dtype)[:, None, :]  # (n, 1, rd/2)
    s = sin[positions].to(x.dtype)[:, None, :]
    rot, rest = x[..., :rd], x[..., rd:]
    if interleaved:
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    else:
        x0, x1 = rot[..., :half], rot[..., half:]
        out = torch.cat((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return torch.cat((out, rest), dim=-1)


def _rows(t: torch.Tensor, cu: torch.Tensor | None, b: int) -> torch.Tensor:
    return t[int(cu[b]) : int(cu[b + 1])] if cu is not None else t[b]


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    cu_seqlens_k_new: torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = True,
    rotary_seqlens: torch.Tensor | None = None,
    qv: torch.Tensor | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    upcast: bool = True,
) -> RefResult:
    """Reference attention. Layouts as in the public API:

    q (b, sq, h, d) | (total_q, h, d) with cu_seqlens_q;  qv like q with dv_qv
    k/v (b_kv, sk, h_k, d|dv) | (total_k, h_k, .) with cu_seqlens_k | (pages, page_size, h_k, .)
    with page_table (b, max_pages);  seqused_k[b] = keys in the cache before the append;
    k_new/v_new (b, sn, h_k, .) | (total_new, h_k, .) with cu_seqlens_k_new.
    """
    fp8 = q.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    out_dtype = torch.bfloat16 if fp8 else q.dtype
    low = torch.bfloat16 if fp8 else q.dtype  # arithmetic dtype of the low-precision mode
    calc = torch.float64 if upcast else low
    batch = cu_seqlens_q.numel() - 1 if cu_seqlens_q is not None else q.shape[0]
    h, d = q.shape[-2], q.shape[-1]
    h_k, dv = k.shape[-2], v.shape[-1]
    group = h // h_k
    if softmax_scale is None:
        softmax_scale = (d + (qv.shape[-1] if qv is not None else 0)) ** -0.5
    appending = k_new is not None
    k_cache = k.clone() if appending else None
    v_cache = v.clone() if appending else None
    keys_src, vals_src = (k_cache, v_cache) if appending else (k, v)

    out = torch.zeros((*q.shape[:-1], dv), dtype=torch.float32 if upcast else out_dtype, device=q.device)
    lse_shape = (h, q.shape[0]) if cu_seqlens_q is not None else (batch, h, q.shape[1])
    lse = torch.full(lse_shape, float("-inf"), dtype=torch.float32, device=q.device)

    for b in range(batch):
        q_b = _rows(q, cu_seqlens_q, b)  # (sq_rows, h, d)
        qv_b = _rows(qv, cu_seqlens_q, b) if qv is not None else None
        sq = int(seqused_q[b]) if seqused_q is not None else q_b.shape[0]
        cb = int(cache_batch_idx[b]) if cache_batch_idx is not None else b

        # Key slot s of this row lives at (tensor row, index) = slot(s).
        if page_table is not None:
            ps = keys_src.shape[1]
            pages = page_table[b].long()

            def read(src: torch.Tensor, n: int) -> torch.Tensor:
                idx = torch.arange(n, device=src.device)
                return src[pages[idx // ps], idx % ps]

            def write(dst: torch.Tensor, start: int, vals: torch.Tensor) -> None:
                idx = torch.arange(start, start + vals.shape[0], device=dst.device)
                dst[pages[idx // ps], idx % ps] = vals.to(dst.dtype)
        else:

            def read(src: torch.Tensor, n: int) -> torch.Tensor:
                return _rows(src, cu_seqlens_k, cb)[:n]

            def write(dst: torch.Tensor, start: int, vals: torch.Tensor) -> None:
                _rows(dst, cu_seqlens_k, cb)[start : start + vals.shape[0]] = vals.to(dst.dtype)

        if seqused_k is not None:
            n_keys = int(seqused_k[b])
        elif page_table is not None:
            raise ValueError("paged KV needs seqused_k (cache_seqlens)")
        else:
            n_keys = _rows(keys_src, cu_seqlens_k, cb).shape[0]

        if appending:
            kn = _rows(k_new, cu_seqlens_k_new, b)
            vn = _rows(v_new, cu_seqlens_k_new, b)
            if rotary_cos is not None:
                offset = int(rotary_seqlens[b]) if rotary_seqlens is not None else n_keys
                pos = torch.arange(kn.shape[0], device=q.device) + offset
                kn = apply_rotary(kn.double(), rotary_cos.double(), rotary_sin.double(), pos, rotary_interleaved)
                local = causal or window_size[0] >= 0 or window_size[1] >= 0
                qpos = torch.arange(q_b.shape[0], device=q.device) + offset if local else torch.full(
                    (q_b.shape[0],), offset, device=q.device
                )
                q_b = apply_rotary(q_b.double(), rotary_cos.double(), rotary_sin.double(), qpos, rotary_interleaved)
                q_b = q_b.to(q.dtype) if not upcast else q_b
            write(keys_src, n_keys, kn)
            write(vals_src, n_keys, vn)
            n_keys += kn.shape[0]

        lp = int(cache_leftpad[b]) if cache_leftpad is not None else 0
        k_b = read(keys_src, n_keys)[lp:]  # (sk, h_k, d)
        v_b = read(vals_src, n_keys)[lp:]
        sk = k_b.shape[0]
        rows = q_b[:sq]

        # (h, sq, sk) scores, GQA by repeating each kv head `group` times.
        kk = k_b.to(calc).repeat_interleave(group, dim=1)
        vv = v_b.to(calc).repeat_interleave(group, dim=1)
        s = torch.einsum("ihd,jhd->hij", rows.to(calc), kk).to(torch.float64 if upcast else torch.float32)
        if q_descale is not None:  # FP8: undo the quantisation scales of q and k
            qk_scale = (q_descale[b] * k_descale[b]).repeat_interleave(group)
            s = s * qk_scale[:, None, None].to(s.dtype)
        if qv_b is not None:
            s = s + torch.einsum("ihd,jhd->hij", qv_b[:sq].to(calc), vv).to(s.dtype)
        s = s * softmax_scale
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        vis = visible_mask(
            sq, sk, causal=causal, window_size=window_size, attention_chunk=attention_chunk, device=q.device
        )
        s = s.masked_fill(~vis, float("-inf"))
        if sinks is not None:
            sink = sinks.to(s.dtype)[:, None, None].expand(h, sq, 1)
            s = torch.cat((s, sink), dim=-1)
        row_lse = torch.logsumexp(s, dim=-1)  # (h, sq); -inf for rows that see nothing
        p = torch.exp(s - torch.where(torch.isinf(row_lse), 0.0, row_lse)[..., None])
        p = torch.where(torch.isinf(row_lse)[..., None], 0.0, p)
        if sinks is not None:
            p = p[..., :-1]
        o = torch.einsum("hij,jhd->ihd", p.to(calc), vv)
        if v_descale is not None:
            o = o * v_descale[b].repeat_interleave(group)[None, :, None].to(o.dtype)
        o_rows = _rows(out, cu_seqlens_q, b)
        o_rows[:sq] = o.to(o_rows.dtype)
        if cu_seqlens_q is not None:
            start = int(cu_seqlens_q[b])
            lse[:, start : start + sq] = row_lse.float()
            if sinks is not None:  # rows past seqused_q see nothing but the sink
                lse[:, start + sq : int(cu_seqlens_q[b + 1])] = sinks.float()[:, None]
        else:
            lse[b, :, :sq] = row_lse.float()
            if sinks is not None:
                lse[b, :, sq:] = sinks.float()[:, None]
    return RefResult(out, lse, k_cache, v_cache)
