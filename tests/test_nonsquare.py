"""Non-square inputs end to end (issue 30): pictures of 320 x 128 in shape (here 160 x 64
pixels, width x height) through `refad train`, `test`, `predict --run`, `export`,
`predict --model` and the HTTP server, at data.image_size [64, 160]; and a ViT run whose
pictures keep their aspect ratio in a square input (data.resize=pad)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_support import live_server, png_bytes
from typer.testing import CliRunner

from refad.cli.main import app
from refad.data import make_demo_dataset

runner = CliRunner()
HEIGHT, WIDTH = 64, 160
TRAIN = ["--backbone", "tf_efficientnet_lite0", "--weights", "none", "--epochs", "1",
         "--batch-size", "4", "--device", "cpu", "--no-progress", "--set",
         "data.categories=[fabric]", "--set", "model.num_layers=1", "--set",
         "model.hidden_dims=[32, 64]"]


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset with every picture and mask stretched to 160 x 64 (width x height)."""
    root = tmp_path_factory.mktemp("wide") / "data"
    make_demo_dataset(root, n_train=6, n_test_good=2, n_test_defect=2, size=64, seed=0)
    for path in root.rglob("*.png"):
        mask = "ground_truth" in path.parts
        method = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
        with Image.open(path) as img:
            img.resize((WIDTH, HEIGHT), method).save(path)
    return root


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def predictions(folder: Path) -> list[dict]:
    return json.loads((folder / "predictions.json").read_text())["predictions"]


def assert_same_predictions(by_run: Path, by_model: Path) -> None:
    a, b = predictions(by_run), predictions(by_model)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x["relative_path"] == y["relative_path"]
        assert x["score"] == pytest.approx(y["score"], rel=1e-5)
        assert x["anomalous"] == y["anomalous"]


def test_a_wide_run_trains_tests_predicts_exports_and_serves(
    wide_root: Path, tmp_path: Path
) -> None:
    run, export = tmp_path / "run", tmp_path / "export"
    invoke("train", "--root", str(wide_root), "--out", str(run), *TRAIN,
           "--set", f"data.image_size=[{HEIGHT}, {WIDTH}]")
    spec = json.loads((run / "checkpoint.json").read_text())["spec"]
    assert spec["image_size"] == [HEIGHT, WIDTH] and spec["strides"] == [8, 16]
    assert spec["shapes"] == [[8, 20], [4, 10]]  # Lite0 levels 2, 3: 8 and 16 px per cell

    invoke("test", "--run", str(run), "--device", "cpu", "--no-progress")
    assert json.loads((run / "metrics.json").read_text())["image_size"] == [HEIGHT, WIDTH]

    images = wide_root / "fabric" / "test"
    invoke("predict", "--run", str(run), str(images), "--out", str(tmp_path / "by-run"),
           "--device", "cpu")
    heat = next((tmp_path / "by-run").rglob("*_heatmap.png"))
    assert Image.open(heat).size == (WIDTH, HEIGHT)

    invoke("export", "--run", str(run), "--out", str(export))
    meta = json.loads((export / "refad-deploy.json").read_text())
    assert meta["input"]["size"] == [HEIGHT, WIDTH] and "resize_mode" not in meta["input"]
    assert meta["outputs"]["anomaly_map"]["shape"] == ["batch", HEIGHT, WIDTH]
    invoke("predict", "--model", str(export), str(images), "--out", str(tmp_path / "by-model"),
           "--device", "cpu")
    assert_same_predictions(tmp_path / "by-run", tmp_path / "by-model")

    from refad.serve.deploy_backend import DeployBackend
    from refad.serve.torch_backend import TorchBackend

    picture = np.asarray(Image.open(next(images.rglob("*.png"))).convert("RGB"))
    scores = []
    for factory in (lambda: TorchBackend(run, "cpu"), lambda: DeployBackend(export, "cpu")):
        with live_server(factory) as server:
            card = httpx.get(server.url + "/v1/model", timeout=30).json()
            assert card["input_size"] == [HEIGHT, WIDTH]
            r = httpx.post(server.url + "/v1/predict", timeout=60,
                           files=[("image", ("x.png", png_bytes(picture), "image/png"))],
                           data={"outputs": "heatmap"})
            assert r.status_code == 200, r.text
            out = r.json()["results"][0]
            assert (out["width"], out["height"]) == (WIDTH, HEIGHT)
            scores.append(out["score"])
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


def test_a_vit_run_with_padded_inputs_predicts_alike_from_run_and_export(
    wide_root: Path, tmp_path: Path
) -> None:
    """A random-weight DINOv2 ViT-S/14 (blocks 1 and 3) at 56 x 56 px: the 160 x 64 pictures
    keep their aspect ratio (content 22 x 56, the rest padded), and every map comes back at
    the picture's size."""
    run, export = tmp_path / "vit", tmp_path / "vit-export"
    invoke("train", "--root", str(wide_root), "--out", str(run), *TRAIN,
           "--backbone", "vit_small_patch14_dinov2", "--set", "backbone.kind=vit",
           "--set", "backbone.levels=[1, 3]", "--set", "data.image_size=56",
           "--set", "data.resize=pad")
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    assert checkpoint["spec"]["shapes"] == [[4, 4], [4, 4]]
    assert checkpoint["spec"]["strides"] == [14, 14]
    assert checkpoint["backbone"]["kind"] == "vit" and checkpoint["backbone"]["resize"] == "pad"
    invoke("test", "--run", str(run), "--device", "cpu", "--no-progress")
    images = wide_root / "fabric" / "test"
    invoke("predict", "--run", str(run), str(images), "--out", str(tmp_path / "by-run"),
           "--device", "cpu")
    heat = next((tmp_path / "by-run").rglob("*_heatmap.png"))
    assert Image.open(heat).size == (WIDTH, HEIGHT)
    invoke("export", "--run", str(run), "--out", str(export))
    meta = json.loads((export / "refad-deploy.json").read_text())
    assert meta["input"]["size"] == 56 and meta["input"]["resize_mode"] == "pad"
    invoke("predict", "--model", str(export), str(images), "--out", str(tmp_path / "by-model"),
           "--device", "cpu")
    assert_same_predictions(tmp_path / "by-run", tmp_path / "by-model")


def test_a_checkpoint_before_strides_and_sizes_reads_as_before() -> None:
    """checkpoint.json files written before (H, W) hold one integer and no strides."""
    from refad.runs.checkpoint import CheckpointMeta, spec_to_dict

    old = {"levels": [2, 3], "channels": [48, 120], "shapes": [[8, 8], [4, 4]], "image_size": 64}
    spec = CheckpointMeta("rlr", 1, 1, old, {}, {}).feature_spec()
    assert spec.image_size == (64, 64) and spec.strides == (8, 16)
    written = json.loads(json.dumps(spec_to_dict(spec)))
    assert written == {**old, "strides": [8, 16]}  # square: still one integer


def test_a_config_whose_resize_rule_differs_from_the_checkpoint_is_refused(
    trained_run: Path, tmp_path: Path
) -> None:
    from refad.errors import CheckpointError
    from refad.runs import open_run

    run = tmp_path / "edited"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["resize"] = "pad"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="says data.resize = 'pad', the checkpoint was "
                       "trained with 'stretch'"):
        open_run(run, "cpu").model("unified")
