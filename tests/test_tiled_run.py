"""Tiling end to end (issue 32, `data.tiling`): a run configured once to score overlapping
64-px tiles of 96 x 160 pictures trains on the tiles, tests, predicts from the run and from
its ONNX export, and serves with both backends - every path the same scores and maps; plus the
shared tiled scoring step itself (`refad.pipeline.tiled`) and its configuration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_support import live_server, png_bytes
from typer.testing import CliRunner

from refad.cli.main import app
from refad.config import RunConfig, apply_overrides
from refad.data import make_demo_dataset
from refad.errors import CheckpointError, ConfigError, DataError
from refad.pipeline.tiled import (
    MAX_SCALED_PIXELS,
    TiledImages,
    Tiling,
    score_tiled,
    tile_batches,
)

runner = CliRunner()
HEIGHT, WIDTH, TILE = 96, 160, 64
TRAIN = ["--backbone", "tf_efficientnet_lite0", "--weights", "none", "--epochs", "1",
         "--batch-size", "4", "--device", "cpu", "--no-progress", "--set",
         "data.categories=[fabric]", "--set", "model.num_layers=1", "--set",
         "model.hidden_dims=[32, 64]", "--set", f"data.image_size={TILE}",
         "--set", "data.tiling.overlap=0.25"]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset with every picture and mask resized to 160 x 96 (width x height)."""
    root = tmp_path_factory.mktemp("tiled") / "data"
    make_demo_dataset(root, n_train=4, n_test_good=2, n_test_defect=2, size=64, seed=0)
    for path in root.rglob("*.png"):
        method = (Image.Resampling.NEAREST if "ground_truth" in path.parts
                  else Image.Resampling.BILINEAR)
        with Image.open(path) as img:
            img.resize((WIDTH, HEIGHT), method).save(path)
    return root


@pytest.fixture(scope="module")
def tiled_run(wide_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiled-run") / "run"
    invoke("train", "--root", str(wide_root), "--out", str(run), *TRAIN)
    return run


def fake_scorer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 'model' whose tile map is the tile's mean red value and whose score is its max."""
    maps = np.repeat(batch[:, :1], 1, axis=1)[:, 0]
    return maps, maps.reshape(len(batch), -1).max(axis=1)


def test_stitched_maps_cover_the_scaled_image_and_the_score_is_the_max_over_tiles() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for scale in (1.0, 0.5, 1.5):
        tiling = Tiling(0.25, scale)
        amap, score = score_tiled(rgb, tiling, (TILE, TILE), (0, 0, 0), (1, 1, 1), fake_scorer,
                                  batch_size=2)
        assert amap.shape == tiling.scaled_hw(rgb.shape)
        assert np.isfinite(amap).all()
        grid, batches = tile_batches(rgb, tiling, (TILE, TILE), (0, 0, 0), (1, 1, 1), 3)
        tile_scores = np.concatenate([fake_scorer(b)[1] for b in batches])
        assert len(tile_scores) == len(grid) and score == pytest.approx(tile_scores.max())
    # every pixel comes from the tiles: an untiled-sized image is one tile, its map itself
    small = rng.integers(0, 255, (TILE, TILE, 3), dtype=np.uint8)
    amap, _ = score_tiled(small, Tiling(0.5), (TILE, TILE), (0, 0, 0), (1, 1, 1), fake_scorer)
    np.testing.assert_allclose(amap, small[:, :, 0] / 255, rtol=1e-6)


def test_tiles_of_several_images_stitch_across_batches() -> None:
    tiling = Tiling(0.25)
    grids = [tiling.grid((HEIGHT, WIDTH), (TILE, TILE)), tiling.grid((TILE, TILE), (TILE, TILE))]
    total = sum(len(g) for g in grids)
    maps = np.ones((total, TILE, TILE), dtype=np.float32)
    scores = np.arange(total, dtype=np.float32)
    images = TiledImages(grids, tiling.overlap)
    done = images.add(maps[:4], scores[:4]) + images.add(maps[4:], scores[4:])
    assert [m.shape for m, _ in done] == [(HEIGHT, WIDTH), (TILE, TILE)]
    assert [s for _, s in done] == [len(grids[0]) - 1, total - 1]
    np.testing.assert_allclose(done[0][0], 1.0)


def test_a_nan_tile_makes_the_image_non_finite() -> None:
    images = TiledImages([Tiling().grid((TILE, TILE), (TILE, TILE))], 0.25)
    (amap, score), = images.add(np.zeros((1, TILE, TILE)), np.array([np.nan]))
    assert np.isnan(score)


@pytest.mark.parametrize("item, field", [
    ("data.tiling.overlap=0.95", "data.tiling.overlap"),
    ("data.tiling.overlap=-0.1", "data.tiling.overlap"),
    ("data.tiling.scale=0", "data.tiling.scale"),
    ("data.tiling.scale=4.5", "data.tiling.scale"),
    ("data.tiling.tile=3", "data.tiling.tile"),
    ("data.tiling=3", "data.tiling"),
])
def test_bad_tiling_values_are_one_line_naming_the_field(item: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        apply_overrides(RunConfig(), [item])
    assert "\n" not in str(err.value)


def test_bad_tiling_on_the_command_line_exits_2(wide_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--root", str(wide_root), "--out",
                                 str(tmp_path / "r"), *TRAIN[:-2], "--set",
                                 "data.tiling.overlap=0.95"])
    assert result.exit_code == 2
    assert "data.tiling.overlap" in result.output


def test_tiling_with_padded_inputs_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.tiling"):
        apply_overrides(RunConfig(), ["data.tiling={}", "data.resize=pad"])


def test_an_untiled_config_saves_as_before() -> None:
    assert "tiling" not in RunConfig().model_dump()["data"]
    tiled = apply_overrides(RunConfig(), ["data.tiling={}"])
    assert tiled.model_dump()["data"]["tiling"] == {"overlap": 0.25, "scale": 1.0}
    assert RunConfig.model_validate(tiled.model_dump()) == tiled


def test_a_scale_beyond_the_image_guards_is_refused() -> None:
    from refad.data.images import MAX_IMAGE_PIXELS

    assert MAX_SCALED_PIXELS == MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="tiling.scale"):
        Tiling(0.25, 4.0).grid((9000, 9000), (TILE, TILE))


def test_a_tiled_run_trains_tests_predicts_exports_and_serves_alike(
    tiled_run: Path, wide_root: Path, tmp_path: Path
) -> None:
    run, export = tiled_run, tmp_path / "export"
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    assert checkpoint["backbone"]["tiling"] == {"overlap": 0.25, "scale": 1.0}
    assert checkpoint["spec"]["image_size"] == TILE
    assert checkpoint["calibration"]["images"] == 4  # stitched images, not their tiles

    invoke("test", "--run", str(run), "--device", "cpu", "--no-progress")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mean"]["p_auroc"] <= 1
    assert metrics["tiling"] == {"overlap": 0.25, "scale": 1.0}
    assert any("scored by tiles of 64 px" in note for note in metrics["notes"])

    images = wide_root / "fabric" / "test"
    invoke("predict", "--run", str(run), str(images), "--out", str(tmp_path / "by-run"),
           "--device", "cpu")
    assert Image.open(next((tmp_path / "by-run").rglob("*_heatmap.png"))).size == (WIDTH, HEIGHT)
    invoke("export", "--run", str(run), "--out", str(export))
    meta = json.loads((export / "refad-deploy.json").read_text())
    assert meta["input"]["tiling"] == {"overlap": 0.25, "scale": 1.0}
    invoke("predict", "--model", str(export), str(images), "--out", str(tmp_path / "by-model"),
           "--device", "cpu")
    by_run = json.loads((tmp_path / "by-run" / "predictions.json").read_text())["predictions"]
    by_model = json.loads((tmp_path / "by-model" / "predictions.json").read_text())["predictions"]
    assert len(by_run) == len(by_model) == 4
    for x, y in zip(by_run, by_model, strict=True):
        assert x["score"] == pytest.approx(y["score"], rel=1e-5)
        assert x["anomalous"] == y["anomalous"]

    from refad.deploy import Inferencer
    from refad.serve.deploy_backend import DeployBackend
    from refad.serve.torch_backend import TorchBackend

    picture = np.asarray(Image.open(next(images.rglob("*.png"))).convert("RGB"))
    backends = {"torch": TorchBackend(run, "cpu"), "deploy": DeployBackend(export, "cpu")}
    results = {k: b.predict_batch([picture], [None], [None])[0] for k, b in backends.items()}
    direct = Inferencer(export).predict(picture)
    for result in (*results.values(), direct):
        assert result.anomaly_map.shape == (HEIGHT, WIDTH)
    reference = results["torch"]
    span = float(np.ptp(reference.anomaly_map))
    for other in (results["deploy"], direct):
        assert other.score == pytest.approx(reference.score, rel=1e-5)
        assert np.abs(other.anomaly_map - reference.anomaly_map).max() <= 1e-4 * span
    scores = []
    for name in backends:
        with live_server(lambda n=name: backends[n]) as server:
            r = httpx.post(server.url + "/v1/predict", timeout=60,
                           files=[("image", ("x.png", png_bytes(picture), "image/png"))])
            assert r.status_code == 200, r.text
            out = r.json()["results"][0]
            assert (out["width"], out["height"]) == (WIDTH, HEIGHT)
            scores.append(out["score"])
            card = httpx.get(server.url + "/v1/model", timeout=30).json()
            assert card["tiling"] == {"overlap": 0.25, "scale": 1.0}
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    assert scores[0] == pytest.approx(reference.score, rel=1e-6)


def test_the_run_and_its_export_refuse_edited_tiling(tiled_run: Path, tmp_path: Path) -> None:
    import shutil

    from refad.runs import open_run

    run = tmp_path / "edited"
    shutil.copytree(tiled_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["tiling"]["overlap"] = 0.5
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="data.tiling"):
        open_run(run, "cpu").model("unified")


def test_tiled_training_features_are_cached_under_their_own_key(
    tiled_run: Path, wide_root: Path, tmp_path: Path
) -> None:
    """Training on tiles keys the feature cache on the tiling: a cache written untiled, or at
    another overlap, is never read as tiles."""
    import torch

    from refad.backbones import FeatureCache
    from refad.data import load_split
    from refad.runs import open_run
    from refad.training.train import extract_features

    run = open_run(tiled_run, "cpu")
    samples = [s for s in load_split(run.config.data, "train")][:2]
    cache = FeatureCache(tmp_path / "cache")
    tiled = extract_features(run.extractor, samples, run.config, torch.device("cpu"), cache,
                             False)
    grid = Tiling(0.25).grid((HEIGHT, WIDTH), (TILE, TILE))
    assert tiled[0].shape[0] == 2 * len(grid)
    plain = run.config.model_copy(update={"data": run.config.data.model_copy(
        update={"tiling": None})})
    untiled = extract_features(run.extractor, samples, plain, torch.device("cpu"), cache, False)
    assert untiled[0].shape[0] == 2
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_training_tiles_are_the_tiles_scoring_cuts(wide_root: Path) -> None:
    """One sample per tile, in image and grid order, the same pixels `score_tiled` feeds the
    model (so a model is trained on what it scores), deterministic."""
    from refad.data import TileDataset, load_split, read_image_rgb

    config = apply_overrides(RunConfig(), [f"data.root={wide_root}", f"data.image_size={TILE}",
                                           "data.categories=[fabric]", "data.tiling.scale=0.8"])
    samples = load_split(config.data, "train")[:2]
    tiling = Tiling.of(config.data.tiling)
    assert tiling is not None
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    dataset = TileDataset(samples, tiling, TILE, mean, std)
    expected = []
    for s in samples:
        _, batches = tile_batches(read_image_rgb(s.image), tiling, (TILE, TILE), mean, std, 5)
        expected.extend(t for b in batches for t in b)
    assert len(dataset) == len(expected) == sum(len(g) for g in dataset.grids)
    for i, tile in enumerate(expected):
        np.testing.assert_array_equal(dataset[i]["image"].numpy(), tile)
    assert [dataset[i]["index"] for i in range(len(dataset))] == [
        i for i, g in enumerate(dataset.grids) for _ in range(len(g))]


def test_calibration_sees_the_stitched_maps_that_scoring_gives(tiled_run: Path) -> None:
    """Thresholds are set on each calibration image's stitched map and max tile score, as
    `predict` scores it: the largest normal score recorded is the largest one predicted."""
    from refad.data import load_split, read_image_rgb
    from refad.inference import Scorer
    from refad.inference.predict import score_rgbs
    from refad.runs import open_run

    run = open_run(tiled_run, "cpu")
    model, meta = run.model("unified")
    rgbs = [read_image_rgb(s.image) for s in load_split(run.config.data, "train")]
    maps, scores = score_rgbs(Scorer(model, "cpu", run.extractor), rgbs, run)
    recorded = meta.calibration
    assert recorded["image_score_max"] == pytest.approx(max(scores), rel=1e-5)
    assert recorded["map_ceiling"] == pytest.approx(max(float(m.max()) for m in maps), rel=1e-5)
