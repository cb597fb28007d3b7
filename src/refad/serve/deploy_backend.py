"""A :class:`~refad.serve.backend.Backend` for an exported folder, via the torch-free
``refad.deploy.Inferencer`` (ONNX Runtime / OpenVINO). Nothing here imports torch.

The Inferencer scores and postprocesses (`refad.pipeline.postprocess`, as the PyTorch backend
does) at the thresholds this backend picks as the PyTorch one does (`request_thresholds`: a
request's own threshold first, source "request"), for the category that decides.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from refad.deploy import Inferencer
from refad.errors import ConfigError
from refad.pipeline.postprocess import Prediction
from refad.runs.layout import UNIFIED
from refad.serve.backend import (
    Categories,
    Images,
    RequestError,
    Thresholds,
    check_category,
    deciding_category,
    request_thresholds,
    threshold_card,
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
        return {
            "backend": f"deploy:{self._inf.runtime}",
            "run": path.name,
            "method": meta["method"],
            "backbone": meta["backbone"].get("name", "unknown"),
            "input_size": self._inf.size,  # an integer: square; else [height, width]
            **({} if self._inf.tiling is None else {"tiling": self._inf.tiling.to_record()}),
            "mode": meta["mode"],
            "categories": self._inf.categories,
            "category_required": not unified and len(units) > 1,
            "thresholds": threshold_card(
                {name: self._inf.calibration(None if unified else name) for name in units}),
            "refad_version": meta["refad_version"],
            "device": self._inf.device,
            "scored_with": self._inf.scored_with(None if unified or len(units) == 1
                                                 else next(iter(units))),
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def warmup(self, batch_size: int = 1) -> list[Prediction]:
        blank = np.zeros((*self._inf.hw, 3), dtype=np.uint8)
        cats = [None] if UNIFIED in self._inf.units or len(self._inf.units) == 1 \
            else sorted(self._inf.units)
        results: list[Prediction] = []
        for cat in cats:
            results = self.predict_batch([blank] * batch_size, [cat] * batch_size,
                                         [None] * batch_size)
        return results

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[Prediction]:
        groups: dict[tuple[str | None, float | None], list[int]] = defaultdict(list)
        for i, (cat, thr) in enumerate(zip(categories, thresholds, strict=True)):
            check_category(self._info, cat)
            groups[(cat, thr)].append(i)
        results: list[Prediction | None] = [None] * len(images)
        for (cat, thr), idx in groups.items():
            category = deciding_category(cat, list(self._inf.units))
            try:
                applied = request_thresholds(self._inf.thresholds(category), thr)
                preds = self._inf.predict_at([images[i] for i in idx], applied, category,
                                             batch_size=len(idx))
            except ConfigError as exc:
                raise RequestError(str(exc)) from None
            for i, p in zip(idx, preds, strict=True):
                results[i] = p
        return [r for r in results if r is not None]
