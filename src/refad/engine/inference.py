"""Scoring helpers shared by training-time calibration, evaluation, prediction and serving.

`amp` runs the reconstruction under bf16 autocast on CUDA (ignored on the CPU); the maps, the
upsampling, the Gaussian filter and the max stay float32 whatever the reconstruction's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from refad.backbones import FeatureExtractor
from refad.engine.device import amp_active, autocast
from refad.models.base import ReconstructionModel, Scores


def score_levels(
    model: ReconstructionModel, levels: list[torch.Tensor], amp: bool = False
) -> Scores:
    """Backbone levels on the model's device -> maps and image scores."""
    device = levels[0].device
    if not amp_active(device, amp):
        return model.score(levels)
    targets = model.targets(levels)
    with autocast(device, True):
        recs = model.reconstruct(targets)
    return model.score_reconstruction(targets, [r.float() for r in recs])


@torch.inference_mode()
def score_images(
    extractor: FeatureExtractor,
    model: ReconstructionModel,
    images: torch.Tensor,
    amp: bool = False,
) -> Scores:
    """Normalised images (B, 3, S, S) already on the model's device -> maps and image scores."""
    return score_levels(model, extractor(images), amp)


@torch.inference_mode()
def score_cached(
    model: ReconstructionModel,
    levels: list[torch.Tensor],
    device: torch.device,
    batch_size: int,
    amp: bool = False,
) -> Iterator[Scores]:
    """Score precomputed backbone levels (N, C, H, W) in batches, yielding per-batch Scores."""
    n = levels[0].shape[0]
    for start in range(0, n, batch_size):
        batch = [lvl[start : start + batch_size].to(device) for lvl in levels]
        yield score_levels(model, batch, amp)
