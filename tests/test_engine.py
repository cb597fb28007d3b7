"""Engine: training, checkpoints, resume, determinism, evaluation, prediction."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from refad.api import evaluate, predict
from refad.errors import CheckpointError, ConfigError, DataError, RefadError
from refad.metrics import METRIC_NAMES
from refad.runs import RunDir, open_run
from refad.runs import checkpoint as ckpt
from refad.training import fit


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).weights_path()))


def test_run_folder_contents(trained_run: Path) -> None:
    meta = json.loads((trained_run / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    assert meta["backbone"]["name"] == "tf_efficientnet_lite2"
    assert meta["backbone"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["calibration"]["source"] == "train-normal"
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["method"] == "rlr" and cfg["backbone"]["levels"] == [2, 3]


def test_cpu_training_is_deterministic(demo_root: Path, trained_run: Path, tmp_path: Path) -> None:
    fit(tiny_config(demo_root), tmp_path / "again", progress=False)
    a, b = weights(trained_run), weights(tmp_path / "again")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_reaches_the_same_result(
    demo_root: Path, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "interrupted"
    real_save = ckpt.save_checkpoint
    calls = {"n": 0}

    def crash_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr("refad.runs.rundir.ckpt.save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(demo_root), run, progress=False)
    assert json.loads((run / "checkpoint.json").read_text())["epoch"] == 1
    monkeypatch.setattr("refad.runs.rundir.ckpt.save_checkpoint", real_save)
    fit(tiny_config(demo_root), run, resume=True, progress=False)
    a, b = weights(trained_run), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(demo_root: Path, trained_run: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny_config(demo_root), trained_run, progress=False)


def test_reload_gives_identical_scores(trained_run: Path) -> None:
    run = open_run(trained_run, "cpu")
    model, _ = run.model("unified")
    again, _ = ckpt.load_model(trained_run, torch.device("cpu"))
    x = torch.randn(2, 3, 64, 64)
    a = model.score(run.extractor(x))
    b = again.score(run.extractor(x))
    assert torch.equal(a.maps, b.maps) and torch.equal(a.image, b.image)


def test_evaluate_writes_all_metrics(trained_run: Path, demo_root: Path) -> None:
    result = evaluate(trained_run, device="cpu", progress=False)
    assert set(result["categories"]) == {p.name for p in demo_root.iterdir() if p.is_dir()}
    for metrics in [*result["categories"].values(), result["mean"]]:
        for name in METRIC_NAMES:
            assert 0.0 <= metrics[name] <= 1.0
    table = (trained_run / "metrics.md").read_text()
    assert "I-AUROC" in table and "AU-PRO" in table and "**mean**" in table
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved["mean"] == pytest.approx(result["mean"])


def test_predict_keeps_going_past_a_corrupt_file(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted(demo_root.glob("*/test/*/*.png"))[:3]
    for i, p in enumerate(good):
        (folder / f"img{i}.png").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(good[0].read_bytes()[:200])
    report = predict(trained_run, [folder], tmp_path / "preds", device="cpu")
    assert len(report.predictions) == 3
    assert len(report.failures) == 1 and "broken.png" in report.failures[0]
    for p in report.predictions:
        assert Path(p.heatmap).is_file() and Path(p.overlay).is_file()
        assert p.anomalous is not None  # the run is calibrated on normal training images
    summary = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert len(summary["predictions"]) == 3 and summary["failures"] == report.failures
    assert (tmp_path / "preds" / "predictions.csv").read_text().count("\n") == 4


def test_checkpoint_of_another_model_is_refused(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    meta = json.loads((copy / "checkpoint.json").read_text())
    meta["model_config"]["hidden_dims"] = [64, 64]
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model-e0002-\w+\.safetensors.*shape"):
        ckpt.load_model(copy, torch.device("cpu"))
    meta["method"] = "uniad"
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, ConfigError)):
        ckpt.load_model(copy, torch.device("cpu"))
    weights_file = copy / meta["files"]["model"]["name"]
    weights_file.write_bytes(b"\x00" * 64)
    meta["method"] = "rlr"
    meta["model_config"]["hidden_dims"] = [32, 64]
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        ckpt.load_model(copy, torch.device("cpu"))
    meta["files"]["model"].update(bytes=64, sha256=hashlib.sha256(b"\x00" * 64).hexdigest())
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.load_model(copy, torch.device("cpu"))


def test_pickle_checkpoint_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="checkpoint.json: not valid JSON"):
        ckpt.read_meta(tmp_path)


def test_disk_full_keeps_previous_checkpoint(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    before = sorted(p.name for p in copy.iterdir())
    model, meta = ckpt.load_model(copy, torch.device("cpu"))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # new weights, so a new file must be written

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("refad.atomic.os.replace", full)
    meta.epoch += 1
    with pytest.raises(RefadError, match=r"model-e0003-\w+\.safetensors: cannot write .No space"):
        ckpt.save_checkpoint(copy, model, meta)
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing half-written is left
    again, kept = ckpt.load_model(copy, torch.device("cpu"))
    assert kept.epoch == 2


def test_bad_config_values_are_one_line_errors(demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        tiny_config(demo_root, "train.epochs=0")
    with pytest.raises(ConfigError, match="model.attention"):
        fit(tiny_config(demo_root, "model.attention=foo"), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="levels"):
        tiny_config(demo_root, "backbone.levels=[7]")
    with pytest.raises(ConfigError, match="bogus"):
        tiny_config(demo_root, "train.bogus=1")


def test_per_category_mode_trains_one_model_per_category(
    demo_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "pc"
    fit(tiny_config(demo_root, "train.mode=per-category", epochs=1), run, progress=False)
    categories = sorted(p.name for p in demo_root.iterdir() if p.is_dir())
    assert sorted(p.name for p in (run / "categories").iterdir()) == categories
    assert not (run / "model.safetensors").exists()
    result = evaluate(run, device="cpu", progress=False)
    assert sorted(result["categories"]) == categories
    with pytest.raises(ConfigError, match="--category"):
        predict(run, [demo_root], tmp_path / "p", device="cpu")
    # a category without a model: named with the run's models (it was "checkpoint.json: no
    # checkpoint here (train first ...)")
    with pytest.raises(ConfigError, match="no model 'bolt' in this run; its models: "
                                          + ", ".join(categories)):
        predict(run, [demo_root], tmp_path / "p", device="cpu", category="bolt")
    report = predict(run, [demo_root / categories[0] / "test"], tmp_path / "p",
                     device="cpu", category=categories[0])
    assert report.predictions and not report.failures


def test_a_per_category_run_refuses_a_category_named_unified(demo_root: Path,
                                                             tmp_path: Path) -> None:
    """Its model was stored as the unified one: `predict` then used another category's model
    for it, and export and serve left it out, all without a word."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "fabric", root / "fabric")
    shutil.copytree(demo_root / "mesh", root / "unified")
    run = tmp_path / "run"
    with pytest.raises(DataError, match="category 'unified': a per-category run"):
        fit(tiny_config(root, "train.mode=per-category", epochs=1), run, progress=False)
    assert not (run / "config.json").exists()  # refused before any training: nothing left


def test_resume_refuses_training_images_changed_since_the_run_began(
    demo_root: Path, tmp_path: Path
) -> None:
    """The held-out split was drawn again from the folder on resume: with an image added in
    between, images already trained on became held-out calibration images, without a word."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    config = tiny_config(root, "train.val_fraction=0.3", epochs=1)
    run = tmp_path / "run"
    fit(config, run, progress=False)
    fit(config, run, resume=True, progress=False)  # the same images: it continues
    extra = root / "fabric" / "train" / "good" / "extra.png"
    shutil.copy(next((root / "fabric" / "train" / "good").iterdir()), extra)
    with pytest.raises(DataError, match="training images changed since the run began"):
        fit(config, run, resume=True, progress=False)
    extra.unlink()
    fit(config, run, resume=True, progress=False)


def test_a_defective_training_image_is_refused(demo_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the layout: a defective image among the training images was trained on and
    calibrated with as a normal one."""
    from refad.data import Sample
    from refad.training import train as train_module

    real = train_module.load_split

    def with_a_defect(data, split):
        samples = real(data, split)
        first = samples[0]
        mask = next((demo_root / first.category / "ground_truth").rglob("*.png"))
        return [Sample(first.image, first.category, 1, mask, "hole"), *samples[1:]]

    monkeypatch.setattr(train_module, "load_split", with_a_defect)
    with pytest.raises(DataError, match="a defective image among the training images"):
        fit(tiny_config(demo_root, epochs=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
