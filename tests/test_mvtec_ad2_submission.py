"""`refad predict --format mvtec_ad2`: float16 TIFF maps and thresholded PNGs in the tree the
MVTec AD 2 evaluation server reads, for the private test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_layouts import make_mvtec_ad2
from PIL import Image
from typer.testing import CliRunner

from refad.cli.main import app
from refad.errors import DataError
from refad.inference.predict import predict_images
from refad.reporting.float16_tiff import float16_tiff_bytes, write_float16_tiff
from refad.reporting.mvtec_ad2_submission import submission_jobs
from refad.runs import open_run

tifffile = pytest.importorskip("tifffile")
runner = CliRunner()
TINY = ["--image-size", "64", "--backbone", "tf_efficientnet_lite2", "--weights", "none",
        "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "model.num_layers=1", "--set", "model.hidden_dims=[32, 64]"]


def test_float16_tiff_reads_back_as_float16(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(0, 50, (9, 13)).astype(np.float32)
    values[0, 0], values[0, 1] = 1e6, -1e6  # beyond float16: clipped, never infinite
    write_float16_tiff(tmp_path / "m.tiff", values)
    back = tifffile.imread(tmp_path / "m.tiff")
    assert back.dtype == np.float16 and back.shape == (9, 13)
    want = np.clip(values, -65504, 65504).astype(np.float16)
    assert np.array_equal(back, want)
    with pytest.raises(DataError, match="shape"):
        float16_tiff_bytes(np.zeros((2, 3, 3)))


def test_jobs_from_root_object_and_split(tmp_path: Path) -> None:
    root = make_mvtec_ad2(tmp_path / "ad2", n_train=1, n_validation=1, n_good=1, n_bad=1)
    assert [(o, s) for o, s, _ in submission_jobs([root])] == [
        ("can", "test_private"), ("can", "test_private_mixed"),
        ("vial", "test_private"), ("vial", "test_private_mixed")]
    assert [(o, s) for o, s, _ in submission_jobs([root / "vial"])] == [
        ("vial", "test_private"), ("vial", "test_private_mixed")]
    assert [(o, s) for o, s, _ in submission_jobs([root / "can" / "test_public"])] == [
        ("can", "test_public")]
    with pytest.raises(DataError, match="not a folder"):
        submission_jobs([root / "can" / "nope"])


@pytest.fixture(scope="module")
def ad2_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sub")
    root = make_mvtec_ad2(base / "mvtec_ad_2")
    run = base / "run"
    result = runner.invoke(app, ["train", "--data", "mvtec_ad2", "--root", str(root),
                                 "--out", str(run), *TINY])
    assert result.exit_code == 0, result.output
    return root, run


def test_predict_writes_the_servers_tree(ad2_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = ad2_run
    out = tmp_path / "submission"
    result = runner.invoke(app, ["predict", str(root), "--run", str(run), "--out", str(out),
                                 "--format", "mvtec_ad2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    opened = open_run(run, "cpu")
    for obj in ("can", "vial"):
        for split in ("test_private", "test_private_mixed"):
            images = sorted((root / obj / split).glob("*.png"))
            maps = sorted((out / "anomaly_images" / obj / split).iterdir())
            masks = sorted((out / "anomaly_images_thresholded" / obj / split).iterdir())
            assert [p.name for p in maps] == [f"{p.stem}.tiff" for p in images]
            assert [p.name for p in masks] == [f"{p.stem}.png" for p in images]
            decided, batches = predict_images(opened, [root / obj / split], category=obj)
            threshold = decided.pixel_threshold
            assert threshold is not None
            for batch in batches:
                for r in batch.results:
                    amap = tifffile.imread(out / "anomaly_images" / obj / split
                                           / f"{r.path.stem}.tiff")
                    assert amap.dtype == np.float16 and amap.shape == r.image.shape[:2]
                    resized = Image.fromarray(r.amap, mode="F").resize(
                        (r.image.shape[1], r.image.shape[0]), Image.Resampling.BILINEAR)
                    assert np.allclose(amap, np.asarray(resized), rtol=2e-3, atol=1e-3)
                    mask = np.asarray(Image.open(out / "anomaly_images_thresholded" / obj
                                                 / split / f"{r.path.stem}.png"))
                    assert set(np.unique(mask)) <= {0, 255}
                    assert np.array_equal(mask == 255, np.asarray(resized) > threshold)
    assert "test_public" not in {p.name for p in (out / "anomaly_images" / "can").iterdir()}


def test_a_public_split_mirrors_good_and_bad(ad2_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = ad2_run
    out = tmp_path / "public"
    result = runner.invoke(app, ["predict", str(root / "vial" / "test_public"), "--run",
                                 str(run), "--out", str(out), "--format", "mvtec_ad2"])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out / "anomaly_images").as_posix()
                     for p in (out / "anomaly_images").rglob("*.tiff"))
    images = sorted(p.relative_to(root).with_suffix(".tiff").as_posix()
                    for p in (root / "vial" / "test_public").glob("[gb]*/*.png"))
    assert written == images  # ground_truth/bad masks are images too: they are left out


def test_bad_submission_requests_are_one_line(ad2_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = ad2_run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for extra, needle in ((["--run", str(run), "--out", str(tmp_path / "full")], "not empty"),
                          (["--model", str(run), "--out", str(tmp_path / "o")], "needs --run"),
                          (["--run", str(run), "--out", str(tmp_path / "o"), "--category",
                            "can"], "drop --category")):
        result = runner.invoke(app, ["predict", str(root), "--format", "mvtec_ad2", *extra])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], result.output
    result = runner.invoke(app, ["predict", str(root), "--run", str(run), "--out",
                                 str(tmp_path / "o2"), "--format", "tiff"])
    assert result.exit_code == 2 and "--format" in result.output
