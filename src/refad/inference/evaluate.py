"""Evaluation on the test split: the seven metrics per category and their mean, and the
decisions at each category's calibrated threshold (false alarms, misses, precision, recall,
F1: what the line would see), with every test image's score for reports.

The model is the run's last-epoch checkpoint; nothing here looks at test results to choose a
checkpoint or a threshold. Metrics stream batch by batch (`refad.metrics.MetricAccumulator`).

A metric a category cannot define (no defective, or for image metrics no normal, test image)
is NaN for that category and the mean is over the categories that define it: `mean_categories`
counts them per metric and `notes` says which were left out and why. A model that gives
non-finite scores or maps (training diverged) gets no metrics at all.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from refad.config import DataConfig
from refad.data import ImageDataset, by_category, load_split
from refad.data.dataset import tiled_test_item
from refad.data.samples import Sample
from refad.device import amp_active
from refad.errors import RefadError, require_at_least_one
from refad.inference.multiview import sample_results
from refad.inference.scorer import Scorer
from refad.metrics import (
    METRIC_NAMES,
    SEGMENTATION_NAMES,
    MetricAccumulator,
    SegmentationCounter,
    decision_metrics,
    mean_decisions,
)
from refad.models.base import Scores
from refad.pipeline.calibration import Calibration, Thresholds
from refad.pipeline.preprocess import size_label
from refad.pipeline.tiled import Tiling, score_tiled
from refad.runs import TrainedRun, checkpoint_identity


def _check_finite(run: TrainedRun, scores: Scores) -> None:
    """NaN or inf would either stop the metrics midway or rank silently; say why instead."""
    finite = torch.isfinite(scores.image).all() & torch.isfinite(scores.maps).all()
    if not finite.item():  # one host synchronisation per batch
        raise RefadError(
            f"{run.path}: the model gives non-finite scores (training diverged?); "
            "no metrics written"
        )


def _undefined_reason(metric: str, n_normal: int, n_defective: int) -> str:
    if n_defective == 0:
        return "no defective test image"
    if n_normal == 0 and metric.startswith("i_"):
        return "no normal test image"
    return "not defined on this test split"


def summarise(
    per_category: Mapping[str, Mapping[str, float]],
    counts: Mapping[str, tuple[int, int]],
) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """(mean, mean_categories, notes): each metric's mean over the categories where it is
    defined, how many those are, and one note per group of metrics left out of categories.

    `counts`: (normal, defective) test images per category, to say why a metric is undefined.
    """
    mean: dict[str, float] = {}
    used: dict[str, int] = {}
    missing: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for name in METRIC_NAMES:
        values = {c: m[name] for c, m in per_category.items()}
        defined = [v for v in values.values() if not math.isnan(v)]
        mean[name] = float(np.mean(defined)) if defined else math.nan
        used[name] = len(defined)
        gone = tuple((c, _undefined_reason(name, *counts[c])) for c, v in values.items()
                     if math.isnan(v))
        if gone:
            missing.setdefault(gone, []).append(name)
    total = len(per_category)
    notes = []
    for gone, names in missing.items():
        where = ", ".join(f"{c} ({why})" for c, why in gone)
        where = f"categor{'y' if len(gone) == 1 else 'ies'} {where}"
        left = total - len(gone)
        tail = f"mean over {left} of {total} categories" if left else "no category defines it"
        notes.append(f"{', '.join(names)}: undefined for {where}; {tail}")
    return mean, used, notes


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
    require_at_least_one("batch_size", batch_size)
    data = data or run.config.data
    samples = load_split(data, "test")
    size = run.config.data.image_size
    tiling = Tiling.of(run.config.data.tiling)
    per_category: dict[str, dict[str, float]] = {}
    counts: dict[str, tuple[int, int]] = {}
    scorers: dict[str, Scorer] = {}
    calibrations: dict[str, Calibration] = {}
    decisions: dict[str, dict[str, Any]] = {}
    images: list[dict[str, Any]] = []
    extra_notes: list[str] = []
    checkpoints: dict[str, dict[str, Any]] = {}
    tic = time.perf_counter()
    for category, group in by_category(samples).items():
        unit = run.unit_for(category)
        if unit not in scorers:
            model, meta = run.model(unit)
            scorers[unit] = Scorer(model, run.device, run.extractor, amp, compile_mode)
            calibrations[unit] = meta.unit_calibration(unit)
            checkpoints[unit] = checkpoint_identity(meta)
            if meta.epoch < meta.epochs and not run.folder.is_imported:  # imported earlier
                # with refad's schedule as its total; it cannot be resumed
                extra_notes.append(
                    f"{unit}: training stopped at epoch {meta.epoch} of {meta.epochs}; these "
                    f"are that model's figures (continue: refad train --out {run.folder.path} "
                    "--resume)"
                )
        scorer = scorers[unit]
        image_scores: list[np.ndarray] = []
        acc = MetricAccumulator(mode=metrics_mode, mixed_sizes=tiling is not None)
        decided = calibrations[unit].for_category(category)
        seg = _segmentation_counter(decided)
        soft_masks = turned_masks = 0
        batches = (_untiled_batches(run, group, batch_size, data.num_workers) if tiling is None
                   else _tiled_batches(run, group, scorer, tiling, batch_size))
        for batch in tqdm(batches, desc=f"test {category}", disable=not progress, leave=False,
                          total=None if tiling is None else len(group)):
            soft_masks += int((batch["soft_mask_pixels"] > 0).sum())
            turned_masks += int(batch["turned_mask"].sum())
            scores = batch["scores"] if tiling is not None else scorer.images(batch["image"])
            _check_finite(run, scores)
            image_scores.append(scores.image.float().cpu().numpy())
            masks = batch["mask"][:, 0].to(run.device) > 0.5
            acc.update(scores.image.float(), batch["label"], scores.maps.float(), masks)
            if seg is not None:  # SegF1 at the calibrated pixel threshold, counted per batch
                seg.update(scores.maps.float(), masks, batch["label"])
        per_category[category] = acc.compute()
        values = np.concatenate(image_scores)
        images.extend(_image_rows(group, values))
        if decided.source == "global" and calibrations[unit].known_categories:
            extra_notes.append(
                f"{category}: not among the run's training categories (no calibration of its "
                "own); decided at the global threshold, and its figures enter the mean"
            )
        if decided.threshold is not None:
            decisions[category] = {
                **decision_metrics(values, np.array([s.label for s in group]),
                                   decided.threshold),
                "threshold_source": decided.source,
                **(seg.compute() if seg is not None else {}),
            }
        n_defective = sum(s.label for s in group)
        counts[category] = (len(group) - n_defective, n_defective)
        if soft_masks:
            extra_notes.append(
                f"{category}: {soft_masks} of {n_defective} masks are not binary (values between "
                "empty and full, e.g. soft edges); binarised at > half of their range"
            )
        if turned_masks:
            extra_notes.append(
                f"{category}: {turned_masks} of {n_defective} defective images carry an EXIF "
                "orientation tag, which refad does not apply; their masks must match the "
                "stored pixels, not the picture a viewer turns (check them)"
            )
    mean, mean_categories, notes = summarise(per_category, counts)
    if tiling is not None:  # the pixel metrics count the pixels of the scaled images
        notes.append(f"scored by tiles of {size_label(size)} px (overlap {tiling.overlap:g}) "
                     f"cut from each image scaled by {tiling.scale:g}; maps, masks and pixel "
                     "metrics at the scaled image size")
    notes += extra_notes
    undecided = sorted(set(per_category) - set(decisions))
    if undecided:
        notes.append(f"no calibrated threshold for {', '.join(undecided)}: no decision metrics")
    sources = {c.images_source for c in calibrations.values() if c.images_source}
    per_sample = {}  # multi-view parts (Real-IAD): from the per-view scores, never the maps
    if getattr(data, "kind", None) == "real_iad":
        per_sample["samples"] = sample_results(
            images, {c: d["threshold"] for c, d in decisions.items()})
    return {
        "method": run.config.method,
        "backbone": run.config.backbone.name,
        "levels": run.config.backbone.levels,
        "image_size": size,
        **({} if tiling is None else {"tiling": tiling.to_record()}),
        "metrics_mode": metrics_mode,
        "amp": amp_active(run.device, amp),
        "compile": compile_mode or "none",
        "seconds": time.perf_counter() - tic,
        "categories": per_category,
        "mean": mean,
        "mean_categories": mean_categories,
        "notes": notes,
        "checkpoints": checkpoints,  # the models scored: a report refuses a newer checkpoint
        "decisions": {
            "rule": "anomalous = score > the category's calibrated threshold",
            "calibration_images": sorted(sources),
            "categories": decisions,
            "mean": mean_decisions(decisions, SEGMENTATION_NAMES) if decisions else {},
        },
        "images": images,
        **per_sample,
    }


def _untiled_batches(run: TrainedRun, group: list[Sample], batch_size: int, workers: int
                     ) -> DataLoader:
    """Test images resized to the model's input, in batches (the DataLoader's)."""
    dataset = ImageDataset(group, run.config.data.image_size, run.extractor.mean,
                           run.extractor.std, run.config.data.resize)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers)


def _tiled_batches(run: TrainedRun, group: list[Sample], scorer: Scorer, tiling: Tiling,
                   batch_size: int) -> Iterator[dict[str, Any]]:
    """One test image at a time, scored by tiles (`refad.pipeline.tiled`, as `predict` and
    the exports): its stitched map and mask at the scaled image size, its max tile score.
    Images may differ in size, so each is its own batch of one (metrics stream them)."""
    mean, std = run.extractor.mean, run.extractor.std
    for sample in group:
        item = tiled_test_item(sample, tiling)
        amap, value = score_tiled(item["rgb"], tiling, run.config.data.hw, mean, std,
                                  scorer.tiles, batch_size)
        yield {
            "scores": Scores(maps=torch.from_numpy(amap)[None].to(run.device),
                             image=torch.tensor([value], dtype=torch.float32)),
            "mask": item["mask"][None],
            "label": torch.tensor([item["label"]]),
            "soft_mask_pixels": torch.tensor([item["soft_mask_pixels"]]),
            "turned_mask": torch.tensor([item["turned_mask"]]),
        }


def _segmentation_counter(decided: Thresholds) -> SegmentationCounter | None:
    """SegF1's counter at the level of the defect masks that `refad predict` draws (the
    category's pixel threshold and mask rule; None: not calibrated)."""
    value = decided.pixel_threshold
    if value is None:
        return None
    return SegmentationCounter(value, decided.mask_rule, decided.map_floor,
                               decided.mask_peak_fraction)


def _image_rows(group: list[Sample], scores: np.ndarray) -> list[dict[str, Any]]:
    """One row per test image: where it is, what it is, and its score (for reports). Paths
    are absolute: a relative data root is relative to where `refad test` ran, and the report
    (any working directory) took every image for moved or deleted."""
    return [
        {"category": s.category, "image": os.path.abspath(s.image),
         "mask": os.path.abspath(s.mask) if s.mask else None,
         "defect": s.defect, "label": int(s.label), "score": float(v)}
        for s, v in zip(group, scores, strict=True)
    ]
