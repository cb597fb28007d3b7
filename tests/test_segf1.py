"""SegF1 and the area ratio at the calibrated pixel threshold: exact counts, streamed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from refad.api import evaluate
from refad.data import ImageDataset, load_split
from refad.metrics import SegmentationCounter, mean_decisions
from refad.reporting.tables import decisions_table


def reference(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, t: float) -> dict:
    """The definitions written out on whole arrays."""
    pred, truth = maps > t, masks > 0.5
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    ratios = [pred[i].sum() / truth[i].sum() for i in range(len(maps))
              if labels[i] and truth[i].any()]
    return {"seg_f1": 2 * tp / (2 * tp + fp + fn) if tp + fn else math.nan,
            "area_ratio": float(np.mean(ratios)) if ratios else math.nan,
            "pixel_tp": tp, "pixel_fp": fp, "pixel_fn": fn}


@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_counts_equal_the_reference_whatever_the_batches(batch: int, kind: str) -> None:
    rng = np.random.default_rng(batch)
    n = 7
    labels = np.array([0, 1, 1, 0, 1, 1, 0])
    masks = np.zeros((n, 16, 16), np.float32)
    for i in np.flatnonzero(labels):
        top, left = rng.integers(0, 10, 2)
        masks[i, top:top + 5, left:left + 4] = 1.0
    maps = rng.random((n, 16, 16)).astype(np.float32) + 0.6 * masks
    counter = SegmentationCounter(0.9)
    for s in range(0, n, batch):
        m, g, y = maps[s:s + batch], masks[s:s + batch], labels[s:s + batch]
        if kind == "torch":
            m, g, y = torch.from_numpy(m)[:, None], torch.from_numpy(g) > 0.5, torch.from_numpy(y)
        counter.update(m, g, y)
    got, want = counter.compute(), reference(maps, masks, labels, 0.9)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["pixel_threshold"] == 0.9


def test_area_ratio_of_a_blob_three_times_the_defect() -> None:
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = True  # 4 defect pixels
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 1:5, 1:4] = 1.0  # 12 flagged pixels, covering the 4
    counter = SegmentationCounter(0.5)
    counter.update(maps, masks, np.array([1, 0]))
    got = counter.compute()
    assert got["area_ratio"] == 3.0
    assert (got["pixel_tp"], got["pixel_fp"], got["pixel_fn"]) == (4, 8, 0)
    assert got["seg_recall"] == 1.0 and got["seg_precision"] == pytest.approx(1 / 3)


def test_undefined_without_defect_pixels_and_means_skip_them() -> None:
    counter = SegmentationCounter(0.5)
    counter.update(np.ones((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), [0, 0])
    got = counter.compute()
    assert math.isnan(got["seg_f1"]) and math.isnan(got["area_ratio"])
    assert got["pixel_fp"] == 32 and got["seg_precision"] == 0.0
    rows = {"a": {"seg_f1": math.nan, "false_alarm_rate": 0.5, "miss_rate": math.nan,
                  "precision": 1.0, "recall": 1.0, "f1": 1.0},
            "b": {"seg_f1": 0.25, "false_alarm_rate": 0.0, "miss_rate": 0.0,
                  "precision": 1.0, "recall": 1.0, "f1": 1.0}}
    assert mean_decisions(rows, ["seg_f1"])["seg_f1"] == 0.25


def test_a_nan_threshold_is_refused() -> None:
    with pytest.raises(Exception, match="pixel threshold"):
        SegmentationCounter(math.nan)


def test_refad_test_reports_segf1_from_the_calibrated_pixel_threshold(
        trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = evaluate(run, "cpu", progress=False)
    size = result["image_size"]
    samples = load_split(json.loads((run / "config.json").read_text())["data"], "test")
    data = ImageDataset(samples, size, [0.5] * 3, [0.5] * 3)
    true_pixels: dict[str, int] = {}
    for i, s in enumerate(samples):  # defect pixels at the map size, from the masks themselves
        true_pixels[s.category] = true_pixels.get(s.category, 0) + int(data[i]["mask"].sum())
    for category, row in result["decisions"]["categories"].items():
        assert row["pixel_tp"] + row["pixel_fn"] == true_pixels[category]
        assert math.isfinite(row["pixel_threshold"])
        tp, fp, fn = row["pixel_tp"], row["pixel_fp"], row["pixel_fn"]
        assert row["seg_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["area_ratio"] >= 0
    mean = result["decisions"]["mean"]
    assert mean["seg_f1"] == pytest.approx(
        np.mean([r["seg_f1"] for r in result["decisions"]["categories"].values()]))
    table = decisions_table(result)
    assert "| SegF1 | area ratio |" in table.splitlines()[0]
    assert "SegF1" in (run / "metrics.md").read_text()
