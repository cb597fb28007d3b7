"""MobileNetV3 bottleneck (inverted residual with squeeze-excite and hard-swish), as CRAD fuses.

Layout of one block (stride 1, same in/out width, so the residual always applies):
1x1 expand -> BN -> h-swish -> kxk depthwise -> BN -> SE -> h-swish -> 1x1 project -> BN, + x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel gate: global average -> Linear(c, c/r) -> ReLU -> Linear(c/r, c) -> h-sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Linear(channels, hidden, bias=False)
        self.expand = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(self.expand(F.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class MobileBottleneck(nn.Module):
    """One MobileNetV3 bottleneck on (B, channels, H, W) maps with `expansion` hidden channels."""

    def __init__(
        self, channels: int, expansion: int, kernel: int = 3, se_reduction: int = 4
    ) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"depthwise kernel must be odd, got {kernel}")
        self.expand = nn.Conv2d(channels, expansion, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(expansion)
        self.depthwise = nn.Conv2d(
            expansion, expansion, kernel, padding=kernel // 2, groups=expansion, bias=False
        )
        self.depthwise_norm = nn.BatchNorm2d(expansion)
        self.se = SqueezeExcite(expansion, se_reduction)
        self.project = nn.Conv2d(expansion, channels, 1, bias=False)
        self.project_norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.expand_norm(self.expand(x)))
        y = F.hardswish(self.se(self.depthwise_norm(self.depthwise(y))))
        return x + self.project_norm(self.project(y))
