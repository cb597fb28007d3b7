"""Windowed attention: each query attends only to the p x p keys around its own position.

Dense attention with a neighbourhood mask spends N^2 work per head although at most p^2 keys per
query can receive weight. Gathering every query's window through a fixed (N, p*p) index table
gives the same softmax over the same keys at N * p^2 cost instead of N^2. Windows
are clipped at the map borders exactly like `neighbourhood_mask`: positions outside the map are
marked invalid and get zero weight, so the result equals the masked dense attention.

Tensors here are token-major, (B, N, heads, head_dim), so that the input and output of the
projections need no transposes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refad.errors import ConfigError
from refad.models.layers.attention import MultiHeadAttention


def window_index_table(
    height: int, width: int, window: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices of every query's window over a flattened H x W grid.

    Returns `index` (N, P) int64 and `valid` (N, P) bool, P = window**2, N = H*W. Row i lists
    the window centred on token i in raster order; slots that fall outside the map hold a
    clipped (in-map) index and `valid` False. Scattering `valid` into an (N, N) matrix at
    `index` gives `neighbourhood_mask(height, width, window)`.
    """
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"attention window must be a positive odd number, got {window}")
    half = window // 2
    offsets = torch.arange(-half, half + 1, device=device)
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    key_y = ys[:, None, None] + offsets[None, :, None]  # (N, p, 1)
    key_x = xs[:, None, None] + offsets[None, None, :]  # (N, 1, p)
    valid = (key_y >= 0) & (key_y < height) & (key_x >= 0) & (key_x < width)
    index = key_y.clamp(0, height - 1) * width + key_x.clamp(0, width - 1)
    n = height * width
    return index.reshape(n, window * window), valid.reshape(n, window * window)


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention of each query over its window of keys.

    q: (B, N, h, dh); k, v: (B or 1, M, h, dh); index/valid: (N, P) from `window_index_table`.
    Keys/values with batch 1 (an input-independent reference) are gathered once and shared by
    the whole batch. The masked softmax runs in float32 whatever the input dtype (the logits
    carry only the matmul's rounding). Returns (B, N, h, dh).
    """
    b = q.shape[0]
    n, p = index.shape
    scale = q.shape[-1] ** -0.5
    flat = index.reshape(-1)  # index_select: its backward (index_add) beats advanced indexing's
    if k.shape[0] == 1:
        # Head-major, query-position-major: one (B x dh) @ (dh x P) product per (head, query
        # position); the gathered windows come out in the layout the matmul reads.
        heads, dh = k.shape[2], k.shape[3]
        kw = k[0].transpose(0, 1).index_select(1, flat).view(heads, n, p, dh)
        vw = v[0].transpose(0, 1).index_select(1, flat).view(heads, n, p, v.shape[3])
        qh = q.permute(2, 1, 0, 3)  # (h, N, B, dh)
        mask = valid[None, :, None, :]  # (1, N, 1, P)
    else:
        heads, dh = k.shape[2], k.shape[3]
        kw = k.transpose(1, 2).index_select(2, flat).view(b, heads, n, p, dh)
        vw = v.transpose(1, 2).index_select(2, flat).view(b, heads, n, p, v.shape[3])
        qh = q.transpose(1, 2)[:, :, :, None]  # (B, h, N, 1, dh)
        mask = valid[:, None, :]  # (N, 1, P)
    logits = torch.matmul(qh, kw.transpose(-1, -2)).float() * scale
    weights = torch.where(mask, logits, float("-inf")).softmax(dim=-1).to(vw.dtype)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    out = torch.matmul(weights, vw)
    if k.shape[0] == 1:
        return out.permute(2, 1, 0, 3)  # (B, N, h, dh)
    return out[:, :, :, 0].transpose(1, 2).reshape(b, -1, *q.shape[2:])


def windowed_attention(
    attn: MultiHeadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """`attn(query, key, value, neighbourhood_mask)` computed over the windows only.

    Uses `attn`'s own projections (same parameters, same result); query (B, N, d), key/value
    (B or 1, N, d) on the same token grid as the table.
    """
    q, k, v = attn.project_tokens(query, key, value)
    dropout = attn.dropout if attn.training else 0.0
    out = local_attention(q, k, v, index, valid, dropout)
    return attn.out_proj(out.reshape(query.shape))
