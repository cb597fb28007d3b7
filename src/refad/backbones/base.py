"""The one interface of every frozen backbone: images in, one feature map per level out.

A backbone never trains: it is always in eval mode (so BatchNorm uses its ImageNet statistics
even when a parent module calls ``.train()``), its parameters do not require grad, and the
forward runs under ``torch.no_grad()``. ``no_grad`` rather than ``inference_mode`` so that the
features can still be used as plain tensors (e.g. targets) in an autograd graph built by the
caller.

Each level is smoothed with a k x k average pool (stride 1, padding k // 2) - the local
neighbourhood aggregation of PatchCore that RLR uses. The pool uses ``count_include_pad=True``
(torch's default, i.e. what a plain ``nn.AvgPool2d(3, 1, 1)`` does): the zero padding counts in
the average, so border values are damped (a corner value becomes 4/9 of its neighbourhood mean
for k = 3).

Each kind says what its levels are (`levels`), their channels and strides (pixels of the input
per feature cell), the normalisation its weights expect, and which input sizes it takes
(`size_step`: a ViT needs multiples of its patch size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import timm
import torch
from torch import nn

from refad.backbones.weights import ResolvedWeights
from refad.config.schema import check_kernel, check_levels
from refad.errors import ConfigError


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Backbone(nn.Module, ABC):
    """Frozen timm model (``self.model``) returning the aggregated maps of ``levels``.

    Subclasses build ``self.model``, fill ``channels``, ``strides`` and ``size_step`` and call
    `finish_build` (which reads ``mean`` and ``std`` from the model's timm config) in their
    ``__init__``, and say how one batch becomes its raw levels.
    """

    kind: ClassVar[str]
    model: nn.Module
    aggregate: nn.Module
    channels: list[int]
    strides: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size_step: int = 1  # input sides must be multiples of this (a ViT's patch size)

    def __init__(self, name: str, levels: Sequence[int], aggregate_kernel: int) -> None:
        super().__init__()
        self.name = name
        self.levels = check_levels(levels, self.kind)
        self.aggregate_kernel = check_kernel(aggregate_kernel)

    def finish_build(self, weights: ResolvedWeights) -> None:
        """Called by subclasses once ``self.model`` is built from ``weights``: the smoothing
        after it, then no gradients and eval mode for good."""
        self.weights_id = weights.weights_id
        self.weights_source = weights.source
        cfg = getattr(self.model, "pretrained_cfg", None) or {}  # what the weights expect
        self.mean = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        k = self.aggregate_kernel
        self.aggregate: nn.Module = (
            nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=True)
            if k > 1
            else nn.Identity()
        )
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Ignore ``mode``: the backbone stays in eval mode so BatchNorm statistics stay fixed."""
        return super().train(False)

    @abstractmethod
    def raw_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> one (B, C_l, H_l, W_l) map per level, unsmoothed."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> one (B, C_l, H_l, W_l) map per level."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.no_grad():
            return [self.aggregate(f).contiguous() for f in self.raw_levels(images)]

    def check_image_size(self, size: int | Sequence[int]) -> tuple[int, int]:
        """The input size as (height, width), refused in one line if this backbone cannot take
        it (a ViT's sides must be multiples of its patch size)."""
        hw = _hw(size)
        step = self.size_step
        if step > 1 and (hw[0] % step or hw[1] % step):
            near = [max(step, round(v / step) * step) for v in hw]
            raise ConfigError(
                f"data.image_size: {list(hw)} is not a multiple of the {step}-pixel patches of "
                f"{self.name} on each side (nearest: {near})"
            )
        return hw

    def use_input_size(self, size: int | Sequence[int]) -> None:
        """Prepare for inputs of ``size`` before a graph is traced from this backbone (a ViT
        resamples its position table; a CNN takes any size as it is)."""
        self.check_image_size(size)

    def output_shapes(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """Spatial size (H_l, W_l) of each level for inputs of ``image_size`` (an integer:
        square; else (height, width))."""
        hw = self.check_image_size(image_size)
        param = next(self.model.parameters())
        probe = torch.zeros(1, 3, *hw, device=param.device, dtype=param.dtype)
        return [(int(f.shape[-2]), int(f.shape[-1])) for f in self(probe)]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, kind={self.kind!r}, levels={list(self.levels)}, "
            f"channels={self.channels}, strides={self.strides}, "
            f"aggregate_kernel={self.aggregate_kernel}, weights_id={self.weights_id!r}"
        )
