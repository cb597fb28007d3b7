"""Positional embeddings beyond the shared normalised sine table in `embedding.py`.

- `LearnedPositionEmbedding2d`: one learned vector per row and per column, concatenated per
  token (x half first, then y half) - UniAD's released configuration ("learned").
- `integer_sine_position_embedding_2d`: the fixed sine/cosine table of the RLR authors' code,
  which uses raw integer positions 0..W-1 / 0..H-1 and puts x before y. It differs from
  `sine_position_embedding_2d` (normalised positions, y first), so an imported RLR checkpoint
  needs this table to reproduce the authors' reconstruction.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def integer_sine_position_embedding_2d(
    height: int, width: int, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed (H*W, dim) table, tokens row-major: channels [0, dim/2) encode x, the rest y.

    Within each half, channel 2k holds sin(p * w_k) and 2k+1 cos(p * w_k), w_k = 10000^(-4k/dim),
    p the integer column (x half) or row (y half) index starting at 0.
    """
    if dim % 4 != 0:
        raise ValueError(f"positional embedding width must be divisible by 4, got {dim}")
    half = dim // 2
    rates = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(1e4) / half))

    def encode(n: int) -> torch.Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * rates  # (n, half/2)
        return torch.stack((angles.sin(), angles.cos()), dim=2).flatten(1)  # (n, half)

    ex = encode(width)[None, :, :].expand(height, width, half)
    ey = encode(height)[:, None, :].expand(height, width, half)
    return torch.cat((ex, ey), dim=2).reshape(height * width, dim).to(dtype)


class LearnedPositionEmbedding2d(nn.Module):
    """(H*W, dim) learned table: token (y, x) gets cat(cols[x], rows[y]).

    Row and column tables are initialised uniform in [0, 1), as in UniAD. Factorising by row and
    column keeps the parameter count at (H + W) * dim / 2 instead of H * W * dim.
    """

    def __init__(self, height: int, width: int, dim: int) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"learned positional embedding width must be even, got {dim}")
        self.height, self.width = height, width
        self.rows = nn.Parameter(torch.rand(height, dim // 2))
        self.cols = nn.Parameter(torch.rand(width, dim // 2))

    def forward(self) -> torch.Tensor:
        h, w = self.height, self.width
        x_part = self.cols[None, :, :].expand(h, w, -1)
        y_part = self.rows[:, None, :].expand(h, w, -1)
        return torch.cat((x_part, y_part), dim=2).reshape(h * w, -1)
