"""Window attention over halo blocks: dense matmuls, 5x less work than a masked dense attention.

The gather-based windowed attention (`local_attention`) is exact and cheap in FLOPs but spends
its time copying every query's own window of keys, which CPUs and exported graphs do slowly.
Here the query grid is cut into b x b blocks; each block reads the (b + p - 1)^2 keys of its
block grown by the window's half-width on every side (its halo), through one small gather per
level, and a fixed (blocks, b*b, K) mask keeps for each query exactly the keys of its own
p x p window that lie inside the map. For RLR's 32 x 32 level (window 7, blocks of 8): 196 keys
per query instead of 1024, in plain batched matmuls. Same keys, same softmax, so the result is
the masked dense attention's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from refad.errors import ConfigError
from refad.models.layers.attention import MultiHeadAttention

HALO_BLOCK = 8  # queries per block side; 8 x 8 blocks divide RLR's 16/32/64-token maps


class HaloTables(NamedTuple):
    """`index` (blocks, K) int64 key index per block slot (clipped into the map); `bias`
    (blocks, b*b, K) float32, 0 where the query may read the key, -inf elsewhere; the block
    side and the H x W token grid they were built for."""

    index: torch.Tensor
    bias: torch.Tensor
    block: int
    height: int
    width: int


def halo_block_for(height: int, width: int, window: int, block: int = HALO_BLOCK) -> int | None:
    """The block side for a map, or None where halo blocks save nothing (small maps)."""
    if height % block or width % block:
        return None
    halo = (block + window - 1) ** 2
    return block if halo < 0.5 * height * width else None


def halo_tables(height: int, width: int, window: int, block: int) -> HaloTables:
    """Gather table and window mask of every block (raster order of blocks and queries)."""
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"attention window must be a positive odd number, got {window}")
    if block < 1 or height % block or width % block:
        raise ConfigError(f"halo block {block} must divide the {height} x {width} map")
    half = window // 2
    side = block + 2 * half
    by = torch.arange(0, height, block).repeat_interleave(width // block)  # block origins
    bx = torch.arange(0, width, block).repeat(height // block)
    offsets = torch.arange(side) - half
    key_y = by[:, None, None] + offsets[None, :, None]  # (blocks, side, 1)
    key_x = bx[:, None, None] + offsets[None, None, :]  # (blocks, 1, side)
    inside = (key_y >= 0) & (key_y < height) & (key_x >= 0) & (key_x < width)
    index = key_y.clamp(0, height - 1) * width + key_x.clamp(0, width - 1)
    inside = inside.reshape(len(by), side * side)
    index = index.reshape(len(by), side * side)
    # query (qy, qx) in its block, key (ky, kx) in the halo: in the window iff |ky - qy| <= half
    # (the halo's origin is `half` before the block's, so key offsets are shifted by `half`)
    q = torch.arange(block)
    k = torch.arange(side) - half
    near_y = (k[None, :] - q[:, None]).abs() <= half  # (b, side)
    near = (near_y[:, None, :, None] & near_y[None, :, None, :]).reshape(block * block, -1)
    allowed = near[None] & inside[:, None, :]  # (blocks, b*b, K)
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    return HaloTables(index, bias, block, height, width)


def _blocks(x: torch.Tensor, height: int, width: int, block: int) -> torch.Tensor:
    """(B, N, h, dh) tokens -> (h, blocks, B, b*b, dh) query blocks."""
    b, _, heads, dh = x.shape
    x = x.reshape(b, height // block, block, width // block, block, heads, dh)
    x = x.permute(5, 1, 3, 0, 2, 4, 6)  # (h, by, bx, B, b, b, dh)
    return x.reshape(heads, -1, b, block * block, dh)


def _unblock(x: torch.Tensor, height: int, width: int, block: int) -> torch.Tensor:
    """(h, blocks, B, b*b, dh) -> (B, N, h, dh), the inverse of `_blocks`."""
    heads, _, b, _, dh = x.shape
    x = x.reshape(heads, height // block, width // block, b, block, block, dh)
    x = x.permute(3, 1, 4, 2, 5, 0, 6)  # (B, by, b, bx, b, h, dh)
    return x.reshape(b, height * width, heads, dh)


def halo_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: HaloTables
) -> torch.Tensor:
    """Each query's softmax over its window's keys, computed per halo block.

    q: (B, N, h, dh); k, v: (B or 1, N, h, dh) (batch-1 keys, an input-independent reference,
    are gathered once for the whole batch). Returns (B, N, h, dh).
    """
    flat = tables.index.reshape(-1)
    blocks, keys = tables.index.shape
    height, width = tables.height, tables.width

    def halo(x: torch.Tensor) -> torch.Tensor:  # (Bk, N, h, dh) -> (h, blocks, Bk, K, dh)
        gathered = x.index_select(1, flat).view(x.shape[0], blocks, keys, *x.shape[2:])
        return gathered.permute(3, 1, 0, 2, 4)

    qb = _blocks(q * q.shape[-1] ** -0.5, height, width, tables.block)
    logits = torch.matmul(qb, halo(k).transpose(-1, -2)).float()  # (h, blocks, B, b*b, K)
    weights = (logits + tables.bias[None, :, None]).softmax(dim=-1).to(v.dtype)
    out = torch.matmul(weights, halo(v))
    return _unblock(out, height, width, tables.block)


def halo_windowed_attention(
    attn: MultiHeadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    tables: HaloTables,
) -> torch.Tensor:
    """`attn(query, key, value, neighbourhood_mask)` computed over halo blocks.

    Uses `attn`'s own projections; query (B, N, d), key/value (B or 1, N, d) on the tables' grid.
    """
    if attn.training and attn.dropout > 0.0:
        raise ConfigError("halo attention has no dropout; train with another attention_impl")
    q, k, v = attn.project_tokens(query, key, value)
    out = halo_attention(q, k, v, tables)
    return attn.out_proj(out.reshape(query.shape))
