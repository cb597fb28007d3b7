"""The defect-mask rule: masks sized like the defect ("peak"), the rule recorded with each
run's calibration, old records keeping their masks, and SegF1 counted at the masks' level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refad.errors import CheckpointError
from refad.metrics.segmentation import SegmentationCounter
from refad.pipeline.calibration import Calibration
from refad.pipeline.defects import defect_level
from refad.pipeline.postprocess import postprocess
from refad.runs.recorded import check_calibration

OLD_RECORD = {"source": "training", "threshold": 2.0, "pixel_threshold": 3.0,
              "map_floor": 1.0, "map_ceiling": 4.0, "categories": {}}
NEW_RECORD = {**OLD_RECORD, "mask_rule": "peak", "mask_peak_fraction": 0.5}


def blob_map(size: int = 64, peak: float = 21.0, sigma: float = 6.0) -> np.ndarray:
    """A smoothed defect: a Gaussian bump over a flat normal level of 1."""
    y, x = np.mgrid[:size, :size]
    bump = np.exp(-((y - 32) ** 2 + (x - 32) ** 2) / (2 * sigma**2))
    return (1.0 + (peak - 1.0) * bump).astype(np.float32)


def test_the_peak_rule_cuts_at_a_fraction_of_the_rise_above_the_floor() -> None:
    assert defect_level(21.0, 3.0, 1.0, "peak", 0.5) == pytest.approx(11.0)
    assert defect_level(3.5, 3.0, 1.0, "peak", 0.5) == 3.0  # never below the pixel threshold
    assert defect_level(21.0, 3.0, 1.0, "normal_max", 0.5) == 3.0
    assert defect_level(21.0, None, 1.0, "peak", 0.5) is None
    # a floor above the pixel threshold (an edited record) still leaves the peak in the mask
    assert 3.0 < defect_level(5.0, 3.0, 8.0, "peak", 0.5) < 5.0
    levels = defect_level(np.array([21.0, 2.0]), 3.0, 1.0, "peak", 0.5)
    np.testing.assert_allclose(levels, [11.0, 3.0])


def test_a_record_without_a_rule_keeps_its_old_masks() -> None:
    """Runs calibrated before the rule draw every pixel above the pixel threshold, as before;
    a run calibrated with it draws a mask a fraction of that size."""
    amap, image = blob_map(), np.zeros((64, 64, 3), np.uint8)
    old = postprocess(image, amap, 21.0, Calibration.from_record(OLD_RECORD).for_category(None))
    new = postprocess(image, amap, 21.0, Calibration.from_record(NEW_RECORD).for_category(None))
    np.testing.assert_array_equal(old.mask, amap > 3.0)
    assert new.mask.sum() < 0.5 * old.mask.sum() and new.mask[32, 32]
    assert old.anomalous == new.anomalous is True  # the image's decision does not change
    assert Calibration.from_record(OLD_RECORD).to_record() == OLD_RECORD
    assert Calibration.from_record(NEW_RECORD).to_record() == NEW_RECORD


@pytest.mark.parametrize(("change", "field"), [
    ({"mask_rule": "blob"}, "mask_rule"),
    ({"mask_peak_fraction": 1.5}, "mask_peak_fraction"),
    ({"mask_peak_fraction": None}, "mask_peak_fraction"),
])
def test_an_edited_rule_is_one_line_naming_the_field(change: dict, field: str) -> None:
    record = {**NEW_RECORD, **change}
    with pytest.raises(CheckpointError, match=field) as err:
        check_calibration(record, "checkpoint.json: calibration")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_segf1_counts_at_the_level_the_masks_are_drawn(as_tensor: bool) -> None:
    maps = np.stack([blob_map(), blob_map(peak=2.5), blob_map(peak=9.0)])
    truth = np.stack([blob_map() > 12.0, np.zeros((64, 64), bool), blob_map(peak=9.0) > 5.0])
    labels = np.array([1, 0, 1])
    counter = SegmentationCounter(3.0, "peak", 1.0, 0.5)
    if as_tensor:
        counter.update(torch.from_numpy(maps), torch.from_numpy(truth), torch.from_numpy(labels))
    else:
        counter.update(maps, truth, labels)
    thresholds = Calibration.from_record(NEW_RECORD).for_category(None)
    predicted = np.stack([m > thresholds.defect_level(float(m.max())) for m in maps])
    tp = int((predicted & truth).sum())
    result = counter.compute()
    assert (result["pixel_tp"], result["pixel_fp"], result["pixel_fn"]) == (
        tp, int((predicted & ~truth).sum()), int((~predicted & truth).sum()))
    assert result["mask_rule"] == "peak"


def test_a_new_run_records_the_rule_with_its_calibration(trained_run: Path) -> None:
    meta = json.loads((trained_run / "checkpoint.json").read_text())
    calibration = meta["calibration"]
    assert calibration["mask_rule"] == "peak" and calibration["mask_peak_fraction"] == 0.85
