"""A :class:`~refad.serve.backend.Backend` for an exported folder, via the torch-free
``refad.deploy.Inferencer`` (ONNX Runtime / OpenVINO). Nothing here imports torch.

The Inferencer decides thresholds itself (the same order as :func:`resolve_threshold`); its
source name "override" is reported as "request", like the PyTorch backend.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from refad.deploy import Inferencer
from refad.errors import ConfigError
from refad.runs.layout import UNIFIED
from refad.serve.backend import (
    Categories,
    ImageResult,
    Images,
    RequestError,
    Thresholds,
    check_category,
)


class DeployBackend:
    """One Inferencer; images are grouped per (category, threshold) as it takes one of each."""

    def __init__(self, model_dir: Path, device: str = "auto", runtime: str | None = None) -> None:
        path = Path(model_dir)
        self._inf = Inferencer(path, runtime=runtime, device=device or "auto")
        self._info = self._build_info(path)

    def _build_info(self, path: Path) -> dict[str, Any]:
        meta = self._inf.meta
        units = self._inf.units
        unified = UNIFIED in units
        per_cat: dict[str, float] = {}
        for name, unit in units.items():
            cats = unit.get("categories", {}) if unified else {name: unit["calibration"]}
            for cat, values in cats.items():
                if values.get("threshold") is not None:
                    per_cat[cat] = float(values["threshold"])
        glob = units[UNIFIED]["calibration"].get("threshold") if unified else None
        return {
            "backend": f"deploy:{self._inf.runtime}",
            "run": path.name,
            "method": meta["method"],
            "backbone": meta["backbone"].get("name", "unknown"),
            "input_size": int(self._inf.size),
            "mode": meta["mode"],
            "categories": self._inf.categories,
            "category_required": not unified and len(units) > 1,
            "thresholds": {"global": None if glob is None else float(glob),
                           "categories": per_cat},
            "refad_version": meta["refad_version"],
            "device": self._inf.device,
            "scored_with": self._inf.scored_with(None if unified or len(units) == 1
                                                 else next(iter(units))),
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def warmup(self, batch_size: int = 1) -> list[ImageResult]:
        blank = np.zeros((self._inf.size, self._inf.size, 3), dtype=np.uint8)
        cats = [None] if UNIFIED in self._inf.units or len(self._inf.units) == 1 \
            else sorted(self._inf.units)
        results: list[ImageResult] = []
        for cat in cats:
            results = self.predict_batch([blank] * batch_size, [cat] * batch_size,
                                         [None] * batch_size)
        return results

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[ImageResult]:
        groups: dict[tuple[str | None, float | None], list[int]] = defaultdict(list)
        for i, (cat, thr) in enumerate(zip(categories, thresholds, strict=True)):
            check_category(self._info, cat)
            groups[(cat, thr)].append(i)
        results: list[ImageResult | None] = [None] * len(images)
        for (cat, thr), idx in groups.items():
            try:
                preds = self._inf.predict_batch([images[i] for i in idx], cat, thr,
                                                batch_size=len(idx))
            except ConfigError as exc:
                raise RequestError(str(exc)) from None
            for i, p in zip(idx, preds, strict=True):
                results[i] = _convert(p)
        return [r for r in results if r is not None]


def _convert(p: Any) -> ImageResult:
    source = "request" if p.threshold_source == "override" else p.threshold_source
    return ImageResult(
        score=float(p.score), threshold=p.threshold, threshold_source=source,
        anomalous=p.anomalous, normalised_score=p.normalised_score,
        anomaly_map=np.asarray(p.anomaly_map, dtype=np.float32), mask=p.mask,
        _heatmap=lambda: p.heatmap, _overlay=lambda _image: p.overlay,
        category=p.category if p.category is not None or p.unit == UNIFIED else p.unit,
    )
