"""Bringing several backbone levels onto one token grid (UniAD, CRAD).

Both methods resize every level bilinearly to one level's grid and concatenate along channels.
The authors resize with `nn.UpsamplingBilinear2d`, i.e. `align_corners=True`, also when the
"upsampling" is really a downsampling (UniAD brings stride 2 to stride 16); we do the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refad.errors import ConfigError
from refad.models.base import FeatureSpec


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens, row-major."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map (inverse of `to_tokens`)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


def grid_index(spec: FeatureSpec, position: int, field: str) -> int:
    """Validate a (possibly negative) position into the spec's levels, return it non-negative."""
    n = len(spec.levels)
    if not -n <= position < n:
        raise ConfigError(f"{field}: {position} is out of range for {n} feature level(s)")
    return position % n


def concat_on_grid(
    levels: list[torch.Tensor], size: tuple[int, int], align_corners: bool = True,
    pool_finer: bool = False,
) -> torch.Tensor:
    """(B, C_l, H_l, W_l) levels -> (B, sum C_l, *size): bilinear resize, then concatenation.

    `pool_finer`: a level finer than the grid is average-pooled onto it instead (each cell
    the mean of the positions it covers, as PatchCore brings levels together)."""

    def resize(lvl: torch.Tensor) -> torch.Tensor:
        if tuple(lvl.shape[-2:]) == tuple(size):
            return lvl
        if pool_finer and lvl.shape[-2] > size[0]:
            return F.adaptive_avg_pool2d(lvl, size)
        return F.interpolate(lvl, size=size, mode="bilinear", align_corners=align_corners)

    return torch.cat([resize(lvl) for lvl in levels], dim=1)
