"""A :class:`~refad.serve.backend.Backend` backed by a trained run folder, scored with PyTorch.

Every model of the run is loaded once at start-up (one per unit: ``unified`` or each category),
so the number of connections never changes what is in memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import refad
from refad.data import image_tensor
from refad.deploy.defects import defect_mask, pixel_threshold
from refad.deploy.render import heatmap_rgb, normalise_map, overlay, resize_map
from refad.device import set_cpu_threads
from refad.inference import Scorer
from refad.inference.thresholds import calibration_for, known_categories
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


def _run_categories(run: TrainedRun, calibration: dict[str, Any]) -> list[str]:
    """Categories a run knows: its units, or (unified) the calibrated ones, as `refad predict`
    takes them, else the configured ones. Never read from the training data: it may be absent
    or elsewhere on the serving machine, and then a mistyped category was decided at the
    global threshold instead of refused."""
    if run.config.train.mode != "unified":
        return list(run.units)
    return known_categories(calibration) or sorted(run.config.data.categories or [])


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
            "categories": _run_categories(self._run, cal[UNIFIED] if unified else {}),
            # one model per category: name it, unless there is only one (as an export of the
            # run answers, and `refad predict`)
            "category_required": not unified and len(self._models) > 1,
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
            "scored_with": next(iter(self._scorers.values())).scored_with,
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

    def _category(self, category: str | None) -> str | None:
        """The category that decides: the one asked for, or a per-category run's only one."""
        check_category(self._info, category)
        if category is None and UNIFIED not in self._models:
            return next(iter(self._models))
        return category

    def _unit(self, category: str | None) -> str:
        return UNIFIED if UNIFIED in self._models else str(category)

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[ImageResult]:
        categories = [self._category(category) for category in categories]
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
        # Pixel decision: the calibrated pixel threshold (`refad.deploy.defects`), as predict
        # and the exported model decide; uncalibrated or a non-finite map: no mask at all
        finite = math.isfinite(score) and bool(np.isfinite(amap).all())
        mask = defect_mask(full, pixel_threshold(cal)) if finite else None
        threshold, source = resolve_threshold(self._info, category, requested)
        anomalous, normalised = decide(score, threshold)

        def heat() -> np.ndarray:
            return heatmap_rgb(normalise_map(full, floor, ceiling))

        result: ImageResult

        def blend(rgb: np.ndarray) -> np.ndarray:
            return overlay(rgb, result.heatmap, mask=result.mask)

        result = ImageResult(
            score=score, threshold=threshold, threshold_source=source, anomalous=anomalous,
            normalised_score=normalised, anomaly_map=full, mask=mask,
            _heatmap=heat, _overlay=blend, category=category,
        )
        return result
