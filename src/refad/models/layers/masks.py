"""Spatial neighbourhood masks over a flattened H x W token grid.

Built once per (shape, window, device) and cached by the caller; never rebuilt in Python loops
per forward pass (the authors' code does that and it dominates their inference latency).
"""

from __future__ import annotations

import torch

from refad.errors import ConfigError

# RLR paper: window 5 for 16x16 maps, 7 for 32x32, 11 for 64x64.
RLR_WINDOWS: dict[int, int] = {16: 5, 32: 7, 64: 11}


def window_size_for(side: int, table: dict[int, int] | None = None) -> int:
    """Window size for a map of `side` tokens: the table entry, else the entry nearest in scale.

    Off-table sizes (small test images, other input sizes) keep the same window-to-map ratio
    as the nearest table size, rounded to an odd number of at least 3.
    """
    table = RLR_WINDOWS if table is None else table
    if side in table:
        return table[side]
    nearest = min(table, key=lambda s: abs(torch.log2(torch.tensor(side / s)).item()))
    p = round(table[nearest] * side / nearest)
    p = max(3, p if p % 2 == 1 else p + 1)
    return min(p, 2 * side - 1)


def neighbourhood_mask(
    height: int, width: int, window: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean (N, N) matrix, N = H*W: True where key token j lies in the window centred on query i.

    The window is `window` x `window`, centred on the query and clipped at the borders, so edge
    tokens have fewer neighbours.
    """
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"attention window must be a positive odd number, got {window}")
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    half = window // 2
    near_y = (ys[:, None] - ys[None, :]).abs() <= half
    near_x = (xs[:, None] - xs[None, :]).abs() <= half
    return near_y & near_x
