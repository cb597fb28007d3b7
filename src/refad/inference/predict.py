"""Prediction on new images: each image's score, anomaly map and (if calibrated) decision.

A folder with some unreadable files is still processed: every good image gets its result and
each bad one a one-line failure, so no work is lost (writing the results is
`refad.reporting.predictions`; the caller exits non-zero when something failed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refad.data import collect_images, image_tensor, read_image_rgb
from refad.errors import ConfigError, RefadError
from refad.inference.scorer import Scorer
from refad.runs import UNIFIED, TrainedRun


@dataclass
class ImageResult:
    """One scored image: its pixels, its map at the model's input size, its score."""

    path: Path
    image: np.ndarray  # (H, W, 3) uint8 as read
    amap: np.ndarray  # (S, S) float32
    score: float


@dataclass
class PredictionBatch:
    results: list[ImageResult]
    failures: list[str]  # one line each: "<file>: <problem>"


def predict_unit(run: TrainedRun, category: str | None) -> str:
    """The unit that scores images of `category` (per-category runs need one)."""
    if run.config.train.mode == "unified":
        return UNIFIED
    if category is None:
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
) -> tuple[dict[str, Any], Iterator[PredictionBatch]]:
    """(the unit's calibration, a lazy stream of scored batches) for images and folders."""
    model, meta = run.model(predict_unit(run, category))
    scorer = Scorer(model, run.device, run.extractor, amp, compile_mode)
    paths = collect_images(inputs)
    size = run.config.data.image_size
    mean, std = run.extractor.mean, run.extractor.std

    def batches() -> Iterator[PredictionBatch]:
        for start in range(0, len(paths), batch_size):
            images, kept, failures = [], [], []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(read_image_rgb(path))
                    kept.append(path)
                except RefadError as exc:
                    failures.append(str(exc))
            if not images:
                yield PredictionBatch([], failures)
                continue
            batch = torch.stack([image_tensor(im, size, mean, std) for im in images])
            scores = scorer.images(batch)
            maps = scores.maps.float().cpu().numpy()
            results = [
                ImageResult(path, image, amap, float(score))
                for path, image, amap, score in zip(
                    kept, images, maps, scores.image.float().cpu().tolist(), strict=True
                )
            ]
            yield PredictionBatch(results, failures)

    return meta.calibration or {}, batches()
