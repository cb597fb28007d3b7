"""Scoring helpers shared by training-time calibration, evaluation and prediction."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from refad.backbones import FeatureExtractor
from refad.models.base import ReconstructionModel, Scores


@torch.inference_mode()
def score_images(
    extractor: FeatureExtractor, model: ReconstructionModel, images: torch.Tensor
) -> Scores:
    """Normalised images (B, 3, S, S) already on the model's device -> maps and image scores."""
    return model.score(extractor(images))


@torch.inference_mode()
def score_cached(
    model: ReconstructionModel,
    levels: list[torch.Tensor],
    device: torch.device,
    batch_size: int,
) -> Iterator[Scores]:
    """Score precomputed backbone levels (N, C, H, W) in batches, yielding per-batch Scores."""
    n = levels[0].shape[0]
    for start in range(0, n, batch_size):
        batch = [lvl[start : start + batch_size].to(device) for lvl in levels]
        yield model.score(batch)
