"""A :class:`~refad.serve.backend.Backend` backed by a trained run folder, scored with PyTorch.

Every model of the run is loaded once at start-up (one per unit: ``unified`` or each category),
so the number of connections never changes what is in memory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import refad
from refad.data import image_tensor, load_split
from refad.deploy.defects import pixel_threshold
from refad.deploy.render import heatmap_rgb, normalise_map, overlay, resize_map
from refad.device import set_cpu_threads
from refad.inference import Scorer
from refad.inference.thresholds import calibration_for
from refad.runs import UNIFIED, TrainedRun, open_run
from refad.serve.backend import (
    Categories,
    ImageResult,
    Images,
    Thresholds,
    check_category,
    decide,
    resolve_threshold,
)


def _run_categories(run: TrainedRun) -> list[str]:
    """Categories a run knows: its units, or (unified) the configured / training-set ones."""
    if run.config.train.mode != "unified":
        return list(run.units)
    if run.config.data.categories:
        return sorted(run.config.data.categories)
    try:  # the training data may not exist on the serving machine: then categories are free
        return sorted({s.category for s in load_split(run.config.data, "train")})
    except Exception:  # noqa: BLE001 - any failure only means "no list to offer"
        return []


class TorchBackend:
    """All units of a run folder on one device; ``predict_batch`` groups images by unit."""

    def __init__(self, run_dir: Path, device: str = "auto", amp: bool = False) -> None:
        set_cpu_threads()
        self._run = open_run(Path(run_dir), device)
        self._amp = amp
        self._size = int(self._run.config.data.image_size)
        self._models = {unit: self._run.model(unit) for unit in self._run.units}
        self._scorers = {
            unit: Scorer(model, self._run.device, self._run.extractor, amp)
            for unit, (model, _) in self._models.items()
        }
        self._calibration = {u: (meta.calibration or {}) for u, (_, meta) in self._models.items()}
        self._info = self._build_info()

    def _build_info(self) -> dict[str, Any]:
        cfg = self._run.config
        unified = cfg.train.mode == "unified"
        cal = self._calibration
        return {
            "backend": "torch",
            "run": self._run.path.name,  # the folder's name only: never a server path
            "method": cfg.method,
            "backbone": cfg.backbone.name,
            "input_size": self._size,
            "mode": cfg.train.mode,
            "categories": _run_categories(self._run),
            "category_required": not unified,
            "thresholds": {
                "global": cal[UNIFIED].get("threshold") if unified else None,
                "categories": {
                    c: v["threshold"]
                    for c, v in (cal[UNIFIED].get("categories") or {}).items()
                    if v.get("threshold") is not None
                } if unified else {
                    u: c["threshold"] for u, c in cal.items() if c.get("threshold") is not None
                },
            },
            "refad_version": refad.__version__,
            "device": str(self._run.device),
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def warmup(self, batch_size: int = 1) -> list[ImageResult]:
        blank = np.zeros((self._size, self._size, 3), dtype=np.uint8)
        results: list[ImageResult] = []
        for unit in self._models:
            category = None if unit == UNIFIED else unit
            results = self.predict_batch([blank] * batch_size, [category] * batch_size,
                                         [None] * batch_size)
        return results

    def _unit(self, category: str | None) -> str:
        check_category(self._info, category)
        return UNIFIED if self._run.config.train.mode == "unified" else str(category)

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[ImageResult]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, category in enumerate(categories):
            groups[self._unit(category)].append(i)
        results: list[ImageResult | None] = [None] * len(images)
        extractor = self._run.extractor
        for unit, idx in groups.items():
            batch = torch.stack(
                [image_tensor(images[i], self._size, extractor.mean, extractor.std) for i in idx]
            )
            scores = self._scorers[unit].images(batch)
            maps = scores.maps.float().cpu().numpy()
            values = scores.image.float().cpu().tolist()
            for j, i in enumerate(idx):
                results[i] = self._result(
                    images[i], maps[j], float(values[j]), categories[i], thresholds[i], unit
                )
        return [r for r in results if r is not None]

    def _result(
        self, image: np.ndarray, amap: np.ndarray, score: float, category: str | None,
        requested: float | None, unit: str,
    ) -> ImageResult:
        h, w = image.shape[:2]
        full = resize_map(amap, w, h).astype(np.float32, copy=False)
        cal = calibration_for(self._calibration[unit], unit, category)
        floor = float(cal.get("map_floor", amap.min()))
        ceiling = float(cal.get("map_ceiling", amap.max()))
        # Pixel decision: the calibrated pixel threshold (`refad.deploy.defects`);
        # uncalibrated, the upper half of the map's own range.
        pixel_level = pixel_threshold(cal)
        pixel_level = (floor + ceiling) / 2 if pixel_level is None else pixel_level
        threshold, source = resolve_threshold(self._info, category, requested)
        anomalous, normalised = decide(score, threshold)

        def heat() -> np.ndarray:
            return heatmap_rgb(normalise_map(full, floor, ceiling))

        result: ImageResult

        def blend(rgb: np.ndarray) -> np.ndarray:
            return overlay(rgb, result.heatmap, mask=result.mask)

        result = ImageResult(
            score=score, threshold=threshold, threshold_source=source, anomalous=anomalous,
            normalised_score=normalised, anomaly_map=full, mask=full > pixel_level,
            _heatmap=heat, _overlay=blend,
        )
        return result
