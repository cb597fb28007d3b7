"""Prediction with a run folder: its unit's calibration and a lazy stream of scored batches.

Reading, batching and naming the images is `refad.inference.batches` (shared with the exported
models' path); writing the results is `refad.reporting.predictions`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from refad.data import image_tensor
from refad.errors import ConfigError
from refad.inference.batches import PredictionBatch, scored_batches
from refad.inference.scorer import Scorer
from refad.pipeline.calibration import Thresholds
from refad.pipeline.preprocess import content_maps
from refad.runs import UNIFIED, TrainedRun


def predict_unit(run: TrainedRun, category: str | None) -> str:
    """The unit that scores images of `category` (per-category runs need one)."""
    if run.config.train.mode == "unified":
        return UNIFIED
    if category is None:
        if len(run.units) == 1:  # its only product, as the exported model takes it
            return next(iter(run.units))
        raise ConfigError(
            f"{run.path}: per-category run; name the --category to use ({', '.join(run.units)})"
        )
    return category


def predict_images(
    run: TrainedRun,
    inputs: Sequence[Path | str],
    category: str | None = None,
    batch_size: int = 8,
    amp: bool = False,
    compile_mode: str | None = None,
) -> tuple[Thresholds, Iterator[PredictionBatch]]:
    """(the values that decide images of `category`, a lazy stream of scored batches) for
    images and folders; without a category, the global threshold decides."""
    unit = predict_unit(run, category)
    model, meta = run.model(unit)
    calibration = meta.unit_calibration(unit)
    known = calibration.known_categories
    if unit == UNIFIED and category is not None and known and category not in known:
        raise ConfigError(
            f"category: {category!r} is not calibrated in {run.path} (known: {', '.join(known)})"
        )
    scorer = Scorer(model, run.device, run.extractor, amp, compile_mode)
    size, resize = run.config.data.image_size, run.config.data.resize
    mean, std = run.extractor.mean, run.extractor.std

    def score(images: list[np.ndarray]) -> tuple[Sequence[np.ndarray], list[float]]:
        scores = scorer.images(
            torch.stack([image_tensor(im, size, mean, std, resize) for im in images]))
        maps = content_maps(scores.maps.float().cpu().numpy(), images, size, resize)
        return maps, scores.image.float().cpu().tolist()

    return calibration.for_category(category), scored_batches(
        inputs, batch_size, score
    )
