"""A :class:`~refad.serve.backend.Backend` backed by a trained run folder, scored with PyTorch.

Every model of the run is loaded once at start-up (one per unit: ``unified`` or each category),
so the number of connections never changes what is in memory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

import refad
from refad.device import set_cpu_threads
from refad.inference import Scorer
from refad.inference.predict import score_rgbs
from refad.pipeline.calibration import Calibration
from refad.pipeline.postprocess import Prediction, postprocess
from refad.pipeline.tiled import Tiling
from refad.runs import UNIFIED, TrainedRun, open_run
from refad.serve.backend import (
    Categories,
    Images,
    Thresholds,
    check_category,
    deciding_category,
    request_thresholds,
    threshold_card,
)


def _run_categories(run: TrainedRun, calibration: Calibration) -> list[str]:
    """Categories a run knows: its units, or (unified) the calibrated ones, as `refad predict`
    takes them, else the configured ones. Never read from the training data: it may be absent
    or elsewhere on the serving machine, and then a mistyped category was decided at the
    global threshold instead of refused."""
    if run.config.train.mode != "unified":
        return list(run.units)
    return calibration.known_categories or sorted(run.config.data.categories or [])


class TorchBackend:
    """All units of a run folder on one device; ``predict_batch`` groups images by unit."""

    def __init__(self, run_dir: Path, device: str = "auto", amp: bool = False) -> None:
        set_cpu_threads()
        self._run = open_run(Path(run_dir), device)
        self._amp = amp
        data = self._run.config.data
        self._size, self._hw, self._resize = data.image_size, data.hw, data.resize
        self._tiling = Tiling.of(data.tiling)
        self._models = {unit: self._run.model(unit) for unit in self._run.units}
        self._scorers = {
            unit: Scorer(model, self._run.device, self._run.extractor, amp)
            for unit, (model, _) in self._models.items()
        }
        self._calibration = {u: meta.unit_calibration(u) for u, (_, meta) in self._models.items()}
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
            **({} if self._tiling is None else {"tiling": self._tiling.to_record()}),
            "mode": cfg.train.mode,
            "categories": _run_categories(self._run, cal[UNIFIED] if unified else Calibration()),
            # one model per category: name it, unless there is only one (as an export of the
            # run answers, and `refad predict`)
            "category_required": not unified and len(self._models) > 1,
            "thresholds": threshold_card(cal),
            "refad_version": refad.__version__,
            "device": str(self._run.device),
            "scored_with": next(iter(self._scorers.values())).scored_with,
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def warmup(self, batch_size: int = 1) -> list[Prediction]:
        blank = np.zeros((*self._hw, 3), dtype=np.uint8)
        results: list[Prediction] = []
        for unit in self._models:
            category = None if unit == UNIFIED else unit
            results = self.predict_batch([blank] * batch_size, [category] * batch_size,
                                         [None] * batch_size)
        return results

    def _category(self, category: str | None) -> str | None:
        """The category that decides: the one asked for, or a per-category run's only one."""
        check_category(self._info, category)
        return deciding_category(category, list(self._models))

    def _unit(self, category: str | None) -> str:
        return UNIFIED if UNIFIED in self._models else str(category)

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[Prediction]:
        categories = [self._category(category) for category in categories]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, category in enumerate(categories):
            groups[self._unit(category)].append(i)
        results: list[Prediction | None] = [None] * len(images)
        for unit, idx in groups.items():
            # the run's input rule (tiles where data.tiling is set), as `refad predict --run`;
            # maps come cut to their pictures
            maps, values = score_rgbs(self._scorers[unit], [images[i] for i in idx], self._run)
            for j, i in enumerate(idx):
                category = categories[i]
                applied = request_thresholds(
                    self._calibration[unit].for_category(category), thresholds[i])
                results[i] = postprocess(images[i], maps[j], float(values[j]), applied,
                                         category, unit)
        return [r for r in results if r is not None]
