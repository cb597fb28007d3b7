"""The one result step (`refad.pipeline.postprocess`) and the typed calibration: (H, W) maps of
any shape, the defect mask and regions, the one decision rule, and the record formats on disk."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from refad.inference.batches import ImageResult, PredictionBatch
from refad.pipeline.calibration import Calibration, Thresholds, Values
from refad.pipeline.decision import decide, exceeds, is_anomalous
from refad.pipeline.postprocess import Prediction, postprocess
from refad.reporting.predictions import write_predictions

RECORD = {  # what `refad.inference.calibration.calibrate` stores, key order included
    "source": "held_out", "threshold_quantile": 0.99, "threshold_rule": "empirical",
    "images": 6, "image_score_median": 1.0, "image_score_max": 1.5, "threshold": 1.4,
    "pixel_threshold": 2.0, "map_floor": 0.1, "map_ceiling": 2.5,
    "categories": {"a": {"images": 3, "image_score_median": 0.9, "image_score_max": 1.2,
                         "threshold": 1.1, "pixel_threshold": 1.8, "map_floor": 0.2,
                         "map_ceiling": 2.2}},
}


def test_the_record_reads_and_writes_back_unchanged() -> None:
    calibration = Calibration.from_record(RECORD)
    assert json.dumps(calibration.to_record()) == json.dumps(RECORD)
    assert calibration.images_source == "held_out" and calibration.known_categories == ["a"]
    assert calibration.category_thresholds() == {"a": 1.1} and calibration.threshold == 1.4
    with pytest.raises(dataclasses.FrozenInstanceError):
        calibration.unit_category = "a"  # type: ignore[misc]


def test_for_category_says_whose_threshold_decides() -> None:
    calibration = Calibration.from_record(RECORD)
    own = calibration.for_category("a")
    assert own == Thresholds(1.1, "category:a", 1.8, 0.2, 2.2, "held_out")
    assert calibration.for_category("unknown") == Thresholds(1.4, "global", 2.0, 0.1, 2.5,
                                                             "held_out")
    # a per-category unit's own values are its category's, without a `categories` record too
    old = Calibration.from_record({"threshold": 3.0, "map_floor": 0.0, "map_ceiling": 4.0}, "b")
    assert old.for_category(None) == Thresholds(3.0, "category:b", 4.0, 0.0, 4.0)
    # no threshold: no source, but the colour range and the defect level still apply
    uncalibrated = Calibration.from_record({"map_floor": 0.0, "map_ceiling": 4.0})
    assert uncalibrated.for_category("a") == Thresholds(None, None, 4.0, 0.0, 4.0)
    assert Calibration.from_record(None).for_category(None) == Thresholds()
    asked = own.overridden(0.5, "override")
    assert (asked.threshold, asked.source, asked.pixel_threshold) == (0.5, "override", 1.8)


def test_the_one_rule_decides_strictly_above() -> None:
    assert exceeds(np.array([1.0, 2.0, 3.0], np.float32), 2.0).tolist() == [False, False, True]
    assert is_anomalous(2.0000001, 2.0) and not is_anomalous(2.0, 2.0)
    assert decide(3.0, 2.0) == (True, 1.5) and decide(1.0, 2.0) == (False, 0.5)
    assert decide(3.0, 2.0, map_finite=False) == (None, None)
    assert decide(math.inf, 2.0) == (None, None) and decide(1.0, None) == (None, None)


def test_a_non_square_map_reaches_the_image_size() -> None:
    """An (h, w) map of any aspect ratio is resized to the (H, W) image; the mask, its regions
    and the pictures are at the image's size."""
    raw = np.zeros((4, 10), np.float32)
    raw[1:3, 6:9] = 5.0
    image = np.full((8, 20, 3), 30, np.uint8)
    thresholds = Thresholds(1.0, "global", 2.0, 0.0, 5.0, "training")
    p = postprocess(image, raw, 4.0, thresholds, "a", "unified")
    assert isinstance(p, Prediction)
    assert p.anomaly_map.shape == p.mask.shape == (8, 20) and p.anomaly_map.dtype == np.float32
    assert p.heatmap.shape == p.overlay.shape == (8, 20, 3)
    assert (p.anomalous, p.normalised_score, p.threshold_source) == (True, 4.0, "global")
    (region,) = p.regions
    assert 10 <= region.x <= 13 and 1 <= region.y <= 3 and region.area == p.defect_pixels
    # the part of a padded input that shows the picture: only it is resized
    padded = np.zeros((4, 16), np.float32)
    padded[:, :10] = raw
    padded[:, 10:] = 99.0  # padding: never part of the image
    cropped = postprocess(image, padded, 4.0, thresholds, content=(4, 10))
    np.testing.assert_array_equal(cropped.anomaly_map, p.anomaly_map)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.score = 0.0  # type: ignore[misc]


def test_no_calibration_colours_by_the_map_and_draws_no_mask() -> None:
    raw = np.linspace(1.0, 3.0, 16, dtype=np.float32).reshape(4, 4)
    p = postprocess(np.zeros((4, 4, 3), np.uint8), raw, 2.0, Thresholds())
    assert (p.map_floor, p.map_ceiling) == (1.0, 3.0)
    assert p.mask is None and p.regions == [] and p.anomalous is None and p.finite


def test_a_non_finite_map_is_decided_by_no_path(trained_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A finite score beside a non-finite map (a diverged model): `refad predict` and the
    exported model gave no decision, the PyTorch server decided it at its threshold (its
    own rule checked the score only). One rule now: no decision, no mask, on every path."""
    from refad.models.base import Scores
    from refad.serve.torch_backend import TorchBackend

    backend = TorchBackend(trained_run, "cpu")
    scorer = backend._scorers["unified"]
    real = scorer.images

    def nan_pixel(batch):  # noqa: ANN001, ANN202
        scores = real(batch)
        maps = scores.maps.clone()
        maps[:, 0, 0] = float("nan")
        return Scores(maps, scores.image)

    monkeypatch.setattr(scorer, "images", nan_pixel)
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    (served,) = backend.predict_batch([image], [None], [None])
    assert math.isfinite(served.score) and served.threshold is not None
    assert (served.anomalous, served.normalised_score, served.mask) == (None, None, None)
    # `refad predict` writes the same for the same map and score
    amap = np.zeros((8, 8), np.float32)
    amap[0, 0] = np.nan
    result = ImageResult(Path("x.png"), image, amap, served.score, PurePosixPath("x.png"),
                         PurePosixPath("x"))
    thresholds = Thresholds(served.threshold, "global", 1.0, 0.0, 1.0)
    (row,) = write_predictions(tmp_path, thresholds, [PredictionBatch([result], [])]).predictions
    assert (row.anomalous, row.normalised_score, row.mask) == (None, None, None)


def test_the_server_answers_what_predict_writes(trained_run: Path, demo_root: Path,
                                                tmp_path: Path) -> None:
    """The PyTorch server's result for an image is `refad predict --run`'s row for it."""
    from refad.api import predict
    from refad.data.images import read_image_rgb
    from refad.serve.torch_backend import TorchBackend

    paths = sorted((demo_root / "fabric" / "test").rglob("*.png"))[:3]
    report = predict(trained_run, paths, tmp_path / "out", device="cpu", category="fabric")
    backend = TorchBackend(trained_run, "cpu")
    served = backend.predict_batch([read_image_rgb(p) for p in paths], ["fabric"] * 3,
                                   [None] * 3)
    for row, p in zip(report.predictions, served, strict=True):
        assert p.score == pytest.approx(row.score, rel=1e-5)
        assert (p.anomalous, p.threshold, p.threshold_source) == (
            row.anomalous, row.threshold, row.threshold_source)
        assert p.defect_pixels == row.defect_pixels
        assert [_box(r.as_dict()) for r in p.regions] == [_box(r) for r in row.regions]


def _box(region: dict) -> dict:
    """A region without its peak map value (float rounding apart, the same)."""
    return {k: v for k, v in region.items() if k != "peak"}


def test_values_left_out_fall_back_to_the_unit() -> None:
    unit = Values(threshold=2.0, map_floor=0.0, map_ceiling=3.0)
    own = Values(threshold=1.0)
    merged = own.over(unit)
    assert (merged.threshold, merged.map_floor, merged.map_ceiling) == (1.0, 0.0, 3.0)
