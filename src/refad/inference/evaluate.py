"""Evaluation on the test split: the seven metrics per category and their mean.

The model is the run's last-epoch checkpoint; nothing here looks at test results to choose a
checkpoint or a threshold. Metrics stream batch by batch (`refad.metrics.MetricAccumulator`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from refad.config import DataConfig
from refad.data import ImageDataset, by_category, load_split
from refad.device import amp_active
from refad.inference.scorer import Scorer
from refad.metrics import METRIC_NAMES, MetricAccumulator
from refad.runs import TrainedRun


def evaluate_run(
    run: TrainedRun,
    data: DataConfig | None = None,
    batch_size: int = 16,
    metrics_mode: str = "exact",
    progress: bool = True,
    amp: bool = False,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Metrics (fractions) per category plus their mean, for an opened run.

    `amp`: bf16 reconstruction on CUDA (maps and metrics stay float32); ignored on the CPU.
    `compile_mode`: torch.compile of the scoring path (see `Scorer`).
    """
    data = data or run.config.data
    samples = load_split(data, "test")
    size = run.config.data.image_size
    per_category: dict[str, dict[str, float]] = {}
    scorers: dict[str, Scorer] = {}
    tic = time.perf_counter()
    for category, group in by_category(samples).items():
        unit = run.unit_for(category)
        if unit not in scorers:
            model, _ = run.model(unit)
            scorers[unit] = Scorer(model, run.device, run.extractor, amp, compile_mode)
        scorer = scorers[unit]
        dataset = ImageDataset(group, size, run.extractor.mean, run.extractor.std)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=data.num_workers)
        acc = MetricAccumulator(mode=metrics_mode)
        for batch in tqdm(loader, desc=f"test {category}", disable=not progress, leave=False):
            scores = scorer.images(batch["image"])
            acc.update(
                scores.image.float(),
                batch["label"],
                scores.maps.float(),
                batch["mask"][:, 0].to(run.device) > 0.5,
            )
        per_category[category] = acc.compute()
    mean = {
        name: float(np.mean([m[name] for m in per_category.values()])) for name in METRIC_NAMES
    }
    return {
        "method": run.config.method,
        "backbone": run.config.backbone.name,
        "levels": run.config.backbone.levels,
        "image_size": size,
        "metrics_mode": metrics_mode,
        "amp": amp_active(run.device, amp),
        "compile": compile_mode or "none",
        "seconds": time.perf_counter() - tic,
        "categories": per_category,
        "mean": mean,
    }
