"""Evaluation on the test split: the seven metrics per category and their mean.

The model is the run's last-epoch checkpoint; nothing here looks at test results to choose a
checkpoint or a threshold. Metrics stream batch by batch (`refad.metrics.MetricAccumulator`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from refad.config import DataConfig
from refad.data import ImageDataset
from refad.engine.device import amp_active
from refad.engine.inference import score_images
from refad.engine.io import write_text_atomic
from refad.engine.run import TrainedRun, open_run
from refad.engine.units import by_category, load_split, unit_for_category
from refad.metrics import METRIC_NAMES, MetricAccumulator

METRIC_LABELS = {
    "i_auroc": "I-AUROC",
    "i_ap": "I-AP",
    "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC",
    "p_ap": "P-AP",
    "p_f1max": "P-F1max",
    "au_pro": "AU-PRO@0.3",
}


def evaluate_run(
    run: TrainedRun,
    data: DataConfig | None = None,
    batch_size: int = 16,
    metrics_mode: str = "exact",
    progress: bool = True,
    amp: bool = False,
) -> dict[str, Any]:
    """Metrics (fractions) per category plus their mean, for a loaded run.

    `amp`: bf16 reconstruction on CUDA (maps and metrics stay float32); ignored on the CPU.
    """
    data = data or run.config.data
    samples = load_split(data, "test")
    size = run.config.data.image_size
    per_category: dict[str, dict[str, float]] = {}
    tic = time.perf_counter()
    for category, group in by_category(samples).items():
        model, _ = run.model(unit_for_category(run.config, category))
        dataset = ImageDataset(group, size, run.extractor.mean, run.extractor.std)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=data.num_workers)
        acc = MetricAccumulator(mode=metrics_mode)
        for batch in tqdm(loader, desc=f"test {category}", disable=not progress, leave=False):
            scores = score_images(run.extractor, model, batch["image"].to(run.device), amp)
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
        "seconds": time.perf_counter() - tic,
        "categories": per_category,
        "mean": mean,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """Per-category rows and the mean, in percent."""
    head = "| category | " + " | ".join(METRIC_LABELS[m] for m in METRIC_NAMES) + " |"
    sep = "|---|" + "---:|" * len(METRIC_NAMES)
    rows = [head, sep]

    def fmt(x: float) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"

    for cat, m in result["categories"].items():
        rows.append(f"| {cat} | " + " | ".join(fmt(m[n]) for n in METRIC_NAMES) + " |")
    rows.append("| **mean** | " + " | ".join(fmt(result["mean"][n]) for n in METRIC_NAMES) + " |")
    return "\n".join(rows)


def evaluate(
    run_dir: Path,
    device: str | torch.device | None = None,
    data: DataConfig | None = None,
    batch_size: int = 16,
    metrics_mode: str = "exact",
    progress: bool = True,
    amp: bool = False,
) -> dict[str, Any]:
    """Evaluate a run folder and write `metrics.json` and `metrics.md` into it."""
    run_dir = Path(run_dir)
    run = open_run(run_dir, device)
    result = evaluate_run(run, data, batch_size, metrics_mode, progress, amp)
    write_text_atomic(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    title = (
        f"# {result['method']} - backbone {result['backbone']}, levels {result['levels']}, "
        f"{result['image_size']} px, last epoch\n\n"
    )
    write_text_atomic(run_dir / "metrics.md", title + markdown_table(result) + "\n")
    return result
