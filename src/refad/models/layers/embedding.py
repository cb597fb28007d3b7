"""Token embeddings: 1x1 projection plus a fixed 2-D sine/cosine positional embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from refad.models.layers.positions import integer_sine_position_embedding_2d


def sine_position_embedding_2d(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed (H*W, dim) embedding: the first half of the channels encodes y, the second half x.

    Positions 1..H (and 1..W) are normalised to (0, 2*pi]; each half holds dim/4 frequencies,
    interleaved as sin, cos (the DETR form). The RLR authors' code uses another table
    (`integer_sine_position_embedding_2d`: integer positions, x first); see TokenEmbedding.
    """
    if dim % 4 != 0:
        raise ValueError(f"positional embedding width must be divisible by 4, got {dim}")
    half = dim // 2
    eps = 1e-6
    scale = 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    idx = torch.arange(half, device=device, dtype=torch.float32)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] / freqs  # (L, half)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    ey = encode(y)[:, None, :].expand(height, width, half)
    ex = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((ey, ex), dim=2).reshape(height * width, dim).to(dtype)


def position_table(kind: str, height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed (H*W, dim) sine table by name: "integer" (RLR authors' code) or "normalised"."""
    if kind == "integer":
        return integer_sine_position_embedding_2d(height, width, dim)
    if kind == "normalised":
        return sine_position_embedding_2d(height, width, dim)
    raise ValueError(f"unknown positional table {kind!r} (integer, normalised)")


class TokenEmbedding(nn.Module):
    """Project C backbone channels to d model channels (1x1, i.e. per token) and add positions.

    The projection weight is kaiming-normal (fan_in); its bias keeps PyTorch's default init,
    as the authors' 1x1 Conv1d does. The positional table is a non-persistent buffer derived
    from the shape, so it is not part of a checkpoint and follows the module's device.
    """

    def __init__(
        self, in_channels: int, dim: int, height: int, width: int, positions: str = "integer"
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, dim)
        nn.init.kaiming_normal_(self.proj.weight, mode="fan_in")
        self.register_buffer(
            "pos", position_table(positions, height, width, dim), persistent=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., N, C) -> (..., N, d)."""
        return self.proj(tokens) + self.pos.to(tokens.dtype)
