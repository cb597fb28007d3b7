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
from refad.pipeline.tiled import TILE_BATCH, Tiling, score_tiled
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

    def score(images: list[np.ndarray]) -> tuple[Sequence[np.ndarray], list[float]]:
        return score_rgbs(scorer, images, run, batch_size)

    return calibration.for_category(category), scored_batches(
        inputs, batch_size, score
    )


def score_rgbs(
    scorer: Scorer, images: Sequence[np.ndarray], run: TrainedRun,
    batch_size: int = TILE_BATCH,
) -> tuple[list[np.ndarray], list[float]]:
    """(h, w, 3) uint8 images -> (maps, scores) by the run's input rule: each map at the model's
    input size cut to its picture, or with `data.tiling` stitched at the scaled image size
    from tiles scored `batch_size` at a time (`refad.pipeline.tiled`, as an export does)."""
    data, mean, std = run.config.data, run.extractor.mean, run.extractor.std
    tiling = Tiling.of(data.tiling)
    if tiling is not None:
        pairs = [score_tiled(im, tiling, data.hw, mean, std, scorer.tiles, batch_size)
                 for im in images]
        return [m for m, _ in pairs], [s for _, s in pairs]
    scores = scorer.images(
        torch.stack([image_tensor(im, data.hw, mean, std, data.resize) for im in images]))
    maps = content_maps(scores.maps.float().cpu().numpy(), images, data.hw, data.resize)
    return list(maps), scores.image.float().cpu().tolist()
