"""Decisions a line can trust: per-category thresholds from normal images only, the decision
metrics at them, predict with and without a category, defect masks and their boxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath
from statistics import NormalDist

import numpy as np
import pytest
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from refad.cli.main import app
from refad.data import ImageDataset, load_split, split_validation
from refad.errors import ConfigError
from refad.inference import Scorer
from refad.inference.batches import ImageResult, PredictionBatch
from refad.inference.calibration import upper_quantile
from refad.metrics import decision_metrics
from refad.pipeline.calibration import Calibration, Thresholds
from refad.pipeline.defects import defect_regions
from refad.reporting.predictions import write_predictions
from refad.runs import open_run
from refad.training import fit

runner = CliRunner()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 1)), min_size=1, max_size=40),
       st.floats(0, 10))
def test_decision_metrics_equal_a_straightforward_reference(rows, threshold) -> None:
    scores = np.array([r[0] for r in rows])
    labels = np.array([r[1] for r in rows])
    got = decision_metrics(scores, labels, threshold)
    pred = (scores > threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    if fp + tn:
        assert got["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    else:
        assert np.isnan(got["false_alarm_rate"])
    if tp + fn:
        p, r, f, _ = precision_recall_fscore_support(labels, pred, average="binary",
                                                     zero_division=np.nan)
        assert got["recall"] == pytest.approx(r) and got["miss_rate"] == pytest.approx(1 - r)
        assert got["f1"] == pytest.approx(f if not np.isnan(f) else 0.0, nan_ok=True)
        if tp + fp:
            assert got["precision"] == pytest.approx(p)
    else:
        assert np.isnan(got["recall"]) and np.isnan(got["miss_rate"])
    if tp + fp == 0:
        assert np.isnan(got["precision"])


def _held_out_scores(run_dir: Path) -> dict[str, np.ndarray]:
    """Scores of the held-out normal images, computed here from the images themselves."""
    run = open_run(run_dir, "cpu")
    cfg = run.config
    _, held = split_validation(load_split(cfg.data, "train"), cfg.train.val_fraction,
                               cfg.train.seed)
    scorer = Scorer(run.model("unified")[0], run.device, run.extractor)
    out = {}
    for cat in sorted({s.category for s in held}):
        group = [s for s in held if s.category == cat]
        data = ImageDataset(group, cfg.data.image_size, run.extractor.mean, run.extractor.std)
        batch = np.stack([data[i]["image"].numpy() for i in range(len(data))])
        import torch

        out[cat] = scorer.images(torch.from_numpy(batch)).image.numpy()
    return out


def test_thresholds_come_from_the_intended_images_only(demo_root: Path, tmp_path: Path) -> None:
    """Held out: each category's threshold is the quantile of ITS held-out normal images'
    scores; replacing every test image (other pixels, same files) changes no threshold."""
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        shutil.copytree(demo_root, root)
    rng = np.random.default_rng(1)
    for img in sorted(roots[1].glob("*/test/*/*.png")):
        shape = np.asarray(Image.open(img)).shape
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(img)
    calibs = []
    for i, root in enumerate(roots):
        cfg = tiny_config(root, "train.val_fraction=0.34", epochs=1)
        assert cfg.train.calibration_set == "held_out"
        fit(cfg, tmp_path / f"run{i}", progress=False)
        calibs.append(open_run(tmp_path / f"run{i}", "cpu").model("unified")[1].calibration)
    assert calibs[0] == calibs[1]
    calib = calibs[0]
    assert calib["source"] == "validation-normal"
    held = _held_out_scores(tmp_path / "run0")
    assert set(calib["categories"]) == set(held) == {"fabric", "mesh", "screw"}
    assert calib["threshold_rule"] == "normal_tail"

    def expected(scores: np.ndarray) -> float:
        z = NormalDist().inv_cdf(0.99)
        return max(np.quantile(scores, 0.99), scores.mean() + z * scores.std(ddof=1))

    for cat, scores in held.items():
        own = calib["categories"][cat]
        assert own["images"] == len(scores) == 2
        assert own["threshold"] == pytest.approx(expected(scores), rel=1e-4)
        assert own["image_score_max"] == pytest.approx(scores.max(), rel=1e-4)
    everything = np.concatenate(list(held.values()))
    assert calib["threshold"] == pytest.approx(expected(everything), rel=1e-4)


def test_threshold_rules() -> None:
    rng = np.random.default_rng(0)
    big = rng.standard_normal(200_000)
    assert upper_quantile(big, 0.99, "normal_tail") == pytest.approx(2.326, abs=0.02)
    few = rng.standard_normal(6)
    assert upper_quantile(few, 0.99, "empirical") == np.quantile(few, 0.99)
    assert upper_quantile(few, 0.99, "normal_tail") >= upper_quantile(few, 0.99, "empirical")
    assert upper_quantile(few, 0.99, "normal_tail") > few.max()  # six images: a margin
    assert upper_quantile(np.array([3.0]), 0.99, "normal_tail") == 3.0


def test_training_calibration_and_a_contradiction(demo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(demo_root, epochs=1)
    assert cfg.train.calibration_set == "training"
    with pytest.raises(ConfigError, match="calibration_images 'held_out' needs"):
        tiny_config(demo_root, "train.calibration_images=held_out")
    with pytest.raises(ConfigError, match="hold out training images for nothing"):
        tiny_config(demo_root, "train.calibration_images=training", "train.val_fraction=0.2")


def test_calibration_for_prefers_the_category() -> None:
    calib = {"source": "train-normal", "threshold": 2.0, "map_floor": 0.0, "map_ceiling": 3.0,
             "categories": {"a": {"threshold": 1.0, "pixel_threshold": 1.5}}}
    own = Calibration.from_record(calib).for_category("a")
    assert (own.threshold, own.source, own.pixel_threshold) == (1.0, "category:a", 1.5)
    assert own.images_source == "train-normal" and own.map_ceiling == 3.0
    glob = Calibration.from_record(calib).for_category(None)
    assert (glob.threshold, glob.source) == (2.0, "global")
    per_category_unit = Calibration.from_record(calib, unit_category="b")
    assert per_category_unit.for_category("b").source == "category:b"
    assert Calibration.from_record(None).for_category("a").threshold is None


def test_predict_with_and_without_category(trained_run: Path, demo_root: Path,
                                           tmp_path: Path) -> None:
    calib = open_run(trained_run, "cpu").model("unified")[1].calibration
    images = demo_root / "fabric" / "test"
    outputs = {}
    for args, out in ((["--category", "fabric"], "cat"), ([], "none")):
        result = runner.invoke(app, ["predict", "--run", str(trained_run), str(images), "--out",
                                     str(tmp_path / out), "--device", "cpu", *args])
        assert result.exit_code == 0, result.output
        outputs[out] = result.output
    cat = json.loads((tmp_path / "cat" / "predictions.json").read_text())
    none = json.loads((tmp_path / "none" / "predictions.json").read_text())
    assert cat["threshold_source"] == "category:fabric" and cat["category"] == "fabric"
    assert cat["threshold"] == calib["categories"]["fabric"]["threshold"]
    assert none["threshold_source"] == "global" and none["threshold"] == calib["threshold"]
    assert "threshold of category fabric" in outputs["cat"]
    assert "the run's global threshold" in outputs["none"]
    for row in cat["predictions"]:
        assert row["anomalous"] == (row["score"] > cat["threshold"])
        assert row["threshold_source"] == "category:fabric"
    for row in none["predictions"]:
        assert row["anomalous"] == (row["score"] > none["threshold"])
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(images), "--out",
                                 str(tmp_path / "bad"), "--category", "fabrik"])
    assert result.exit_code == 2 and "'fabrik' is not calibrated" in result.output


def test_predict_on_an_uncalibrated_run_says_there_is_no_decision(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["calibration"] = None  # as an imported run, or one stopped before calibration
    (run / "checkpoint.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["predict", "--run", str(run), str(demo_root / "fabric" / "test"),
                                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no calibrated threshold in this run" in result.output
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    assert rows and all(row["anomalous"] is None for row in rows)


def test_defect_regions_of_a_hand_made_mask() -> None:
    mask = np.zeros((10, 12), bool)
    mask[1:3, 1:4] = True  # 6 pixels
    mask[5:9, 7:12] = True  # 20 pixels, touches the right edge
    mask[9, 0] = True  # 1 pixel, diagonal neighbours only with nothing
    mask[4, 6] = True  # diagonal to (5, 7): same 8-connected region
    amap = np.arange(120, dtype=np.float32).reshape(10, 12)
    regions = defect_regions(mask, amap)
    got = [(r.x, r.y, r.width, r.height, r.area) for r in regions]
    assert got == [(6, 4, 6, 5, 21), (1, 1, 3, 2, 6), (0, 9, 1, 1, 1)]
    assert regions[0].peak == amap[8, 11] and regions[2].peak == amap[9, 0]
    assert defect_regions(np.zeros((3, 3), bool), np.zeros((3, 3))) == []


def test_predict_writes_the_mask_its_boxes_and_the_outline(tmp_path: Path) -> None:
    """A hand-made 8x8 map, one hot 2x2 block; image 16x16: the mask is the block scaled
    (bilinear resize, then > pixel threshold), its box and area are in the row."""
    amap = np.zeros((8, 8), np.float32)
    amap[2:4, 4:6] = 10.0
    image = np.full((16, 16, 3), 40, np.uint8)
    result = ImageResult(Path("x.png"), image, amap, 10.0, PurePosixPath("x.png"),
                         PurePosixPath("x"))
    calib = Thresholds(threshold=5.0, source="category:a", pixel_threshold=5.0,
                       map_floor=0.0, map_ceiling=10.0)
    report = write_predictions(tmp_path, calib, [PredictionBatch([result], [])], "a")
    row = report.predictions[0]
    mask = np.asarray(Image.open(tmp_path / "x_mask.png")) > 127
    ys, xs = np.nonzero(mask)
    assert row.anomalous is True and row.defect_pixels == int(mask.sum()) > 0
    assert len(row.regions) == 1
    box = row.regions[0]
    assert (box["x"], box["y"]) == (xs.min(), ys.min())
    assert (box["width"], box["height"]) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert 4 <= box["width"] <= 6 and 8 <= box["x"] <= 9  # the block, scaled by 2
    over = np.asarray(Image.open(tmp_path / "x_overlay.png"))
    assert (over[ys.min(), xs.min()] == 255).all()  # the outline's corner is painted
    assert not (over[0, 0] == 255).all()
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert saved["predictions"][0]["regions"] == row.regions
    assert saved["threshold_source"] == "category:a" and saved["pixel_threshold"] == 5.0
    csv_text = (tmp_path / "predictions.csv").read_text()
    assert '""x"": ' in csv_text  # boxes as JSON in one CSV cell
