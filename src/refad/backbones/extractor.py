"""The backbone a run's `backbone` section describes: a CNN's feature levels or a ViT's blocks,
both behind `refad.backbones.base.Backbone`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from refad.backbones.base import Backbone
from refad.backbones.cnn import CnnBackbone, FeatureExtractor
from refad.backbones.vit import VitBackbone
from refad.config.schema import BackboneConfig

BACKBONE_CLASSES: dict[str, type[Backbone]] = {"cnn": CnnBackbone, "vit": VitBackbone}

__all__ = ["BACKBONE_CLASSES", "Backbone", "FeatureExtractor", "build_extractor"]


def build_extractor(
    cfg: BackboneConfig | Mapping[str, Any],
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Backbone:
    """The extractor a run's `backbone` section describes (a mapping is validated as one),
    in eval mode on `device` when given."""
    if not isinstance(cfg, BackboneConfig):
        data = dict(cfg)
        seed = int(data.pop("seed", seed))
        if data.get("weights", "auto") is None:
            data["weights"] = "none"
        cfg = BackboneConfig.parse(data, where="backbone")
    weights = None if cfg.weights == "none" else cfg.weights
    extractor = BACKBONE_CLASSES[cfg.kind](
        cfg.name, levels=cfg.levels, weights=weights, aggregate_kernel=cfg.aggregate_kernel,
        seed=seed,
    )
    return extractor.eval() if device is None else extractor.to(device).eval()
