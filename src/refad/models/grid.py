"""Shared base of the methods that reconstruct all levels together on one token grid.

UniAD and CRAD both resize every backbone level to one level's grid, concatenate them along
channels, reconstruct that single target and train on its mean squared error. Only the network
and the score rules differ, so those stay in each method's module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from refad.models.base import FeatureSpec, ReconstructionModel
from refad.models.layers import Noise, concat_on_grid, grid_index


class GridReconstructionModel(ReconstructionModel):
    """One target: the levels on the grid of `config.grid_level`; loss: MSE against it.

    A subclass names its config class and its network, built as
    `network(channels, height, width, config)` on that grid.
    """

    config_class: ClassVar[type]
    network: ClassVar[Callable[..., nn.Module]]

    def __init__(
        self, spec: FeatureSpec, config: Any = None, device: torch.device | str | None = None
    ) -> None:
        """`device` is part of the common constructor; these methods make no per-device
        choice."""
        config = config or self.config_class()
        super().__init__(spec, config)
        idx = grid_index(spec, config.grid_level, "model.grid_level")
        self.grid: tuple[int, int] = tuple(spec.shapes[idx])
        self.net = self.network(sum(spec.channels), *self.grid, config)

    def targets(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return [concat_on_grid(levels, self.grid)]

    def loss(
        self, levels: list[torch.Tensor], generator: Noise = None
    ) -> torch.Tensor:
        targets = self.targets(levels)
        (rec,) = self.reconstruct(targets, generator)
        return F.mse_loss(rec, targets[0])
