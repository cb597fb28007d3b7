"""No run is ever lost, no result silently wrong: the run-folder side.

Each test here failed on the code before the transactional checkpoints, locks and guards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

import refad.atomic
from refad.api import evaluate, predict
from refad.cli.main import app
from refad.errors import CheckpointError, RefadError, TrainingError
from refad.runs import RunDir, open_run
from refad.runs import checkpoint as ckpt
from refad.runs.lock import folder_lock
from refad.training import fit

runner = CliRunner()


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).weights_path()))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class FailNth:
    """Make the n-th call (0-based) of a wrapped OS function raise, counting every call."""

    def __init__(self, real, n: int, exc: BaseException) -> None:
        self.real, self.n, self.exc, self.calls = real, n, exc, 0

    def __call__(self, *args, **kwargs):
        k = self.calls
        self.calls += 1
        if k == self.n:
            raise self.exc
        return self.real(*args, **kwargs)


def failing_writer(fail: FailNth, real):
    """A Path.write_bytes / write_text that counts its calls through `fail`."""
    return lambda path, data, *args, **kwargs: fail(path, data, real)


@pytest.mark.parametrize("where", ["replace", "write"])
def test_an_interrupted_save_at_any_point_keeps_the_last_complete_epoch(
    demo_root: Path, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """Fail each rename (or each file write) of the second epoch's save in turn, as a kill
    or a full disk would: the run opens at epoch 1, and --resume ends bit-identical to an
    uninterrupted run."""
    target = ("refad.atomic.os", "replace") if where == "replace" else ("pathlib.Path", None)
    for n in range(4):  # epoch 2 saves: model, optimizer, manifest; then calibration's save
        run = tmp_path / f"{where}{n}"
        fit(tiny_config(demo_root, epochs=1), run, progress=False)
        config = RunDir(run).read_config()
        RunDir(run).write_config(config.model_copy(
            update={"train": config.train.model_copy(update={"epochs": 2})}))
        exc = OSError(errno.ENOSPC, "No space left on device")
        if target[1] == "replace":
            fail = FailNth(os.replace, n, exc)
            monkeypatch.setattr(refad.atomic.os, "replace", fail)
        else:  # the tensor files are written with write_bytes, the manifest with write_text
            fail = FailNth(lambda path, data, write: write(path, data), n, exc)
            for name in ("write_bytes", "write_text"):
                monkeypatch.setattr(Path, name, failing_writer(fail, getattr(Path, name)))
        with pytest.raises(RefadError, match="No space left"):
            fit(config, run, resume=True, progress=False)
        monkeypatch.undo()
        meta = RunDir(run).read_meta("unified")
        assert meta.epoch in (1, 2)  # the manifest names one complete epoch, never a mix
        open_run(run, "cpu").model("unified")  # and it loads
        fit(config, run, resume=True, progress=False)
        assert RunDir(run).read_meta("unified").epoch == 2
        assert same_weights(run, trained_run), (where, n)
        tensors = sorted(p.name for p in run.iterdir() if p.name.endswith(".safetensors"))
        assert len(tensors) == 2 and not list(run.glob(".*.tmp"))  # left-overs removed


def test_stale_temporaries_and_superseded_files_are_removed_by_the_next_writer(
    demo_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    fit(tiny_config(demo_root, epochs=1), run, progress=False)
    stale = [run / ".model-e0002-abc.safetensors.x1y2.tmp", run / "model-e0002-dead.safetensors"]
    for p in stale:
        p.write_bytes(b"\0" * 1024)
    open_run(run, "cpu").model("unified")  # readers never delete anything
    assert all(p.exists() for p in stale)
    config = RunDir(run).read_config()
    RunDir(run).write_config(config.model_copy(
        update={"train": config.train.model_copy(update={"epochs": 2})}))
    fit(config, run, resume=True, progress=False)
    assert not any(p.exists() for p in stale)


def test_format_1_run_folder_still_opens_and_resumes(
    demo_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    """A run folder written before the manifest (fixed file names) opens, tests, and on
    resume is rewritten in the new format with the same weights."""
    run = tmp_path / "old"
    fit(tiny_config(demo_root, epochs=1), run, progress=False)
    meta = json.loads((run / "checkpoint.json").read_text())
    for kind, entry in meta.pop("files").items():
        (run / entry["name"]).rename(run / f"{kind}.safetensors")
    meta["format"] = "refad-checkpoint/1"
    (run / "checkpoint.json").write_text(json.dumps(meta))
    old = ckpt.read_meta(run)
    assert old.format == "refad-checkpoint/1"
    assert RunDir(run).weights_path() == run / "model.safetensors"
    evaluate(run, device="cpu", progress=False)
    config = RunDir(run).read_config()
    config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    RunDir(run).write_config(config)
    fit(config, run, resume=True, progress=False)
    assert ckpt.read_meta(run).format == "refad-checkpoint/2"
    assert not (run / "model.safetensors").exists()
    assert same_weights(run, trained_run)


def test_diverged_training_stops_with_a_clear_error_and_keeps_the_last_good_epoch(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_module = sys.modules["refad.training.train"]

    real = fit_module.run_epoch

    def diverge_in_epoch_2(model, optimizer, features, config, epoch, *args):
        stats = real(model, optimizer, features, config, epoch, *args)
        return stats if epoch == 0 else type(stats)(float("nan"), stats.images, stats.seconds)

    monkeypatch.setattr(fit_module, "run_epoch", diverge_in_epoch_2)
    run = tmp_path / "nan"
    with pytest.raises(TrainingError, match="loss became nan in epoch 2.*epoch 1 is the last"):
        fit(tiny_config(demo_root), run, progress=False)
    assert RunDir(run).read_meta("unified").epoch == 1
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "huge-lr"), "--root",
                                 str(demo_root), "--image-size", "64", "--backbone",
                                 "tf_efficientnet_lite2", "--weights", "none", "--epochs", "1",
                                 "--device", "cpu", "--no-progress", "--lr", "1e30"])
    assert result.exit_code == 2 and "non-finite" in result.output or "loss became" in (
        result.output
    ), result.output


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "uniad"), ("backbone.name", "tf_efficientnet_lite0"),
     ("backbone.levels", [1, 2]), ("data.image_size", 96)],
)
def test_config_that_disagrees_with_the_checkpoint_is_refused(
    trained_run: Path, tmp_path: Path, field: str, value: object
) -> None:
    run = tmp_path / "edited"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / "config.json").read_text())
    section, _, name = field.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    if field == "method":
        cfg["model"] = {}
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"says {field} = .*trained with"):
        open_run(run, "cpu").model("unified")
    result = runner.invoke(app, ["test", "--run", str(run), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2 and field in result.output


def test_second_writer_of_a_run_or_an_output_gets_a_clear_error(
    demo_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with folder_lock(run, "x"):
        with pytest.raises(RefadError, match="in use by another refad process .pid"):
            fit(tiny_config(demo_root), run, resume=True, progress=False)
        with pytest.raises(RefadError, match="in use by another refad process"):
            evaluate(run, device="cpu", progress=False)
    out = tmp_path / "preds"
    image = sorted(demo_root.glob("fabric/test/*/*.png"))[0]
    code = (
        "import sys, time; from refad.runs.lock import folder_lock\n"
        f"with folder_lock({str(out)!r}, 'x'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RefadError, match=f"pid {holder.pid}"):
            predict(run, [image], out, device="cpu")
    finally:
        holder.kill()
        holder.wait()
    assert predict(run, [image], out, device="cpu").predictions  # a killed holder frees it


def test_a_failed_first_training_leaves_no_config_behind(demo_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "nut" / "train" / "good").mkdir(parents=True)
    run = tmp_path / "run"
    with pytest.raises(RefadError):
        fit(tiny_config(empty), run, progress=False)
    assert not (run / "config.json").exists()
    fit(tiny_config(demo_root, epochs=1), run, progress=False)  # the same --out works again


def test_resume_refuses_flags_it_would_ignore(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--epochs", "9",
                                 "--set", "train.lr=1"])
    assert result.exit_code == 2
    assert "--epochs, --set would be ignored" in result.output


@pytest.mark.parametrize("case", ["file", "readonly"])
def test_unwritable_outputs_are_one_line_errors(
    demo_root: Path, trained_run: Path, tmp_path: Path, case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case == "file":
        out = tmp_path / "taken"
        out.write_text("a file")
        expected = "exists and is not a folder"
    else:
        out = tmp_path / "ro" / "out"
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        if refad.atomic.writable(tmp_path / "ro"):  # root ignores mode bits: as a ro mount
            monkeypatch.setattr(refad.atomic, "writable", lambda folder: False)
        expected = "not writable|cannot create"
    image = sorted(demo_root.glob("fabric/test/*/*.png"))[0]
    for args in (["train", "--out", str(out), "--root", str(demo_root), "--device", "cpu"],
                 ["predict", "--run", str(trained_run), str(image), "--out", str(out)]):
        result = runner.invoke(app, args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert str(out) in lines[0] and any(e in lines[0] for e in expected.split("|"))


@pytest.mark.parametrize("command", ["test", "predict"])
def test_batch_sizes_below_one_are_refused(
    trained_run: Path, demo_root: Path, tmp_path: Path, command: str
) -> None:
    args = ["--run", str(trained_run), "--batch-size", "0"]
    if command == "predict":
        args += [str(demo_root), "--out", str(tmp_path / "p")]
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 2 and "--batch-size: must be at least 1" in result.output


def test_sigterm_stops_training_like_ctrl_c_and_the_run_resumes(
    demo_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "refad", "train", "--out", str(run), "--root", str(demo_root),
           "--image-size", "64", "--backbone", "tf_efficientnet_lite2", "--weights", "none",
           "--epochs", "400", "--batch-size", "4", "--device", "cpu", "--no-progress",
           "--set", "model.num_layers=1", "--set", "model.hidden_dims=[32, 64]",
           "--set", "model.num_heads=4"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    epoch = RunDir(run).read_meta("unified").epoch
    assert 1 <= epoch < 400
    open_run(run, "cpu").model("unified")


def test_dangling_symlink_among_training_images_is_named(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    link = root / "fabric" / "train" / "good" / "zz_gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(RefadError, match="zz_gone.png: dangling symbolic link"):
        fit(tiny_config(root, epochs=1), tmp_path / "run", progress=False)


def test_resume_without_the_manifest_keeps_the_weights_and_says_why(
    trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoint.json").unlink()
    kept = sorted(p.name for p in run.glob("*.safetensors"))
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "checkpoint.json" in lines[0] and "safetensors" in lines[0]
    assert sorted(p.name for p in run.glob("*.safetensors")) == kept


@pytest.mark.parametrize("edit", [
    ("model", "hidden_dims", [16, 32]),
    ("backbone", "levels", [1, 2]),
    ("data", "image_size", 96),
])
def test_resume_refuses_an_edited_config_in_one_line(
    trained_run: Path, tmp_path: Path, edit: tuple
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    section, key, value = edit
    config[section][key] = value
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "checkpoint.json").read_text()
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "edited or foreign run folder" in lines[0]
    assert (run / "checkpoint.json").read_text() == before


@pytest.mark.parametrize("name", ["checkpoint.json", "metrics.json"])
def test_a_nan_edited_into_a_run_file_is_refused_not_used(
    trained_run: Path, tmp_path: Path, name: str
) -> None:
    """Python's json reads NaN; a NaN threshold would make every verdict "good" silently."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if name == "metrics.json":
        evaluate(run, progress=False)
    key, command = (('"threshold": ', "test") if name == "checkpoint.json"
                    else ('"i_auroc": ', "report"))
    text = (run / name).read_text()
    assert key in text
    (run / name).write_text(text.replace(key, key + 'NaN, "was": ', 1))
    result = runner.invoke(app, [command, "--run", str(run)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert name in lines[0] and "NaN is not a JSON number" in lines[0]


@pytest.mark.parametrize("edit, field", [
    (lambda k: k.__setitem__("files", []), "files"),
    (lambda k: k["files"].__setitem__("model", "x"), "files.model"),
    (lambda k: k.__setitem__("spec", "x"), "spec"),
    (lambda k: k["spec"].pop("channels"), "spec.channels"),
    (lambda k: k.__setitem__("model_config", []), "model_config"),
    (lambda k: k.__setitem__("backbone", "x"), "backbone"),
    (lambda k: k.__setitem__("calibration", "x"), "calibration"),
    # a threshold that is not a number was taken for "uncalibrated": every verdict blank
    (lambda k: k["calibration"].__setitem__("threshold", "x"), "calibration.threshold"),
    (lambda k: k["calibration"]["categories"]["fabric"].__setitem__("threshold", True),
     "calibration.categories.fabric.threshold"),
    (lambda k: k.__setitem__("history", [{"epoch": "a"}]), "history.0.epoch"),
])
def test_a_checkpoint_json_with_a_field_of_the_wrong_type_is_one_line(
    trained_run: Path, demo_root: Path, tmp_path: Path, edit, field: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    edit(meta)
    (run / "checkpoint.json").write_text(json.dumps(meta))
    image = str(demo_root / "fabric" / "test" / "good" / "000.png")
    for command in (["test", "--run", str(run)],
                    ["predict", "--run", str(run), image, "--out", str(tmp_path / "preds")]):
        result = runner.invoke(app, command)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"checkpoint.json: {field}: " in lines[0], lines[0]
    assert not (tmp_path / "preds").exists()


def test_a_failed_command_leaves_no_empty_folder_it_created(tmp_path: Path) -> None:
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), folder_lock(new, "x"):
        raise RuntimeError("refused")
    assert not new.exists()
    kept = tmp_path / "kept"  # something was written: the folder stays
    with pytest.raises(RuntimeError), folder_lock(kept, "x"):
        (kept / "result.csv").write_text("a")
        raise RuntimeError("late failure")
    assert (kept / "result.csv").is_file()
    existing = tmp_path / "existing"  # the user's folder is never removed
    existing.mkdir()
    with pytest.raises(RuntimeError), folder_lock(existing, "x"):
        raise RuntimeError("refused")
    assert existing.is_dir()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_bad_data_is_reported_before_the_backbone_is_fetched(
    tmp_path: Path, command: str
) -> None:
    # the default backbone's weights are not on this machine: fetching them first fails on
    # the network (after retries), hiding the real problem
    out = tmp_path / "out"
    args = [command, "--out", str(out), "--epochs", "1"]
    if command == "compare":
        args += ["--methods", "rlr"]
    nowhere = ["--root", str(tmp_path / "nowhere")]
    for extra, expected in (([], "data.root is required"),
                            (nowhere, "dataset root folder not found")):
        result = runner.invoke(app, args + extra)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert expected in lines[0]
        assert not out.exists()


@pytest.mark.parametrize("unit", ["../victim", "/tmp/victim", "..", "", "a/b", "a\\b"])
def test_a_unit_never_lies_outside_its_run_folder(tmp_path: Path, unit: str) -> None:
    """A per-category unit is named by its category; one from a csv ('../../victim') wrote
    checkpoints over another run and deleted that run's weights as left-overs."""
    from refad.runs.layout import unit_path

    with pytest.raises(CheckpointError, match="would lie outside the run folder"):
        unit_path(tmp_path / "run", unit)
    assert unit_path(tmp_path / "run", "pcb1") == tmp_path / "run" / "categories" / "pcb1"
