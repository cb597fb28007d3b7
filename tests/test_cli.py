"""The `refad` command: one-line errors with exit status 2, and the demo end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_data import TINY, one_error_line
from PIL import Image
from typer.testing import CliRunner

import refad.api
from refad.cli.main import app

runner = CliRunner()


def test_corrupt_training_image_is_named(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    victim = sorted((root / "mesh" / "train" / "good").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:100])
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root", str(root),
                                 *TINY])
    line = one_error_line(result)
    assert victim.name in line


def test_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(tmp_path / "empty"), *TINY])
    assert "empty" in one_error_line(result)


def test_bad_config_value(demo_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(demo_root), *TINY, "--set", "model.alpha=-2"])
    assert "alpha" in one_error_line(result)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_compile_option_sets_train_compile(demo_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "bad"), "--root",
                                 str(demo_root), *TINY, "--compile", "fastest"])
    assert "train.compile" in one_error_line(result)
    seen = []  # what training receives (compiled training itself: tests/test_fast_path.py)
    monkeypatch.setattr(refad.api, "fit", lambda config, *a, **k: seen.append(config) or [])
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(demo_root), *TINY, "--compile", "reduce-overhead"])
    assert result.exit_code == 0, result.output
    assert seen[0].train.compile == "reduce-overhead"


def test_missing_run_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["test", "--run", str(tmp_path / "nope"), "--no-progress"])
    assert "not a refad run folder" in one_error_line(result)


def test_predict_reports_bad_files_and_exits_nonzero(trained_run: Path, tmp_path: Path,
                                                     demo_root: Path) -> None:
    good = sorted(demo_root.glob("screw/test/*/*.png"))[0]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(good), str(bad),
                                 "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "bad.png" in result.output and "1 images scored" in result.output
    # outputs mirror the inputs under their common parent (here the session's temp folder)
    rows = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    assert [r["relative_path"] for r in rows] == [good.relative_to(tmp_path.parent).as_posix()]
    assert Path(rows[0]["heatmap"]).is_file()


def test_predict_into_a_non_empty_out_is_refused_or_replaced_with_overwrite(
    trained_run: Path, tmp_path: Path, demo_root: Path
) -> None:
    """A second predict into one folder left the first one's pictures beside a
    predictions.json that no longer listed them (and replaced its files without a word)."""
    images = sorted(demo_root.glob("screw/test/good/*.png"))[:2]
    out = tmp_path / "p"

    def run(*args: str):
        return runner.invoke(app, ["predict", "--run", str(trained_run), *args,
                                   "--out", str(out), "--device", "cpu"])

    assert run(*map(str, images)).exit_code == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "is not empty" in one_error_line(run(str(images[0])))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert run(str(images[0]), "--overwrite").exit_code == 0
    rows = json.loads((out / "predictions.json").read_text())["predictions"]
    listed = {Path(r[k]).resolve() for r in rows for k in ("heatmap", "overlay", "mask") if r[k]}
    pictures = {p.resolve() for p in out.rglob("*.png")}
    assert len(rows) == 1 and pictures == listed  # nothing stale beside them
    notes = tmp_path / "notes"  # a folder refad did not write is never emptied
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(images[0]), "--out",
                                 str(notes), "--overwrite", "--device", "cpu"])
    assert "was not written by refad predict" in one_error_line(result)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    (out / "sub").mkdir()
    (out / "sub" / "inside.png").write_bytes(images[1].read_bytes())
    assert "--overwrite would delete it" in one_error_line(run(str(out / "sub" / "inside.png"),
                                                               "--overwrite"))
    assert (out / "sub" / "inside.png").is_file()


def test_a_folder_holding_an_earlier_prediction_is_not_read_as_images(
    trained_run: Path, tmp_path: Path, demo_root: Path
) -> None:
    """Images given by name may have their --out beside them; a later predict on their folder
    scored those heatmaps and overlays as product images (8 rows for 2 images)."""
    folder = tmp_path / "line"
    folder.mkdir()
    for image in sorted(demo_root.glob("screw/test/good/*.png"))[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    names = [str(p) for p in sorted(folder.glob("*.png"))]
    first = runner.invoke(app, ["predict", "--run", str(trained_run), *names,
                                "--out", str(folder / "preds"), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    for given in ([str(folder)], [str(folder / "preds")]):  # the folder, or a shell's `line/*`
        result = runner.invoke(app, ["predict", "--run", str(trained_run), *given,
                                     "--out", str(tmp_path / "again"), "--device", "cpu"])
        assert "holds an earlier refad prediction" in one_error_line(result)
        assert not (tmp_path / "again").exists()
    # one killed before its predictions.json (SIGKILL): its lock file beside its pictures
    (folder / "preds" / "predictions.json").unlink()
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder),
                                 "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert "holds an earlier refad prediction" in one_error_line(result)


def test_an_interrupted_predict_leaves_no_pictures_behind(
    trained_run: Path, tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (or a full disk) after the first pictures left them without the
    predictions.json that lists them, and the same command was then refused as not empty."""
    from refad.reporting import predictions

    real = predictions._write_result
    written = []

    def stop_at_the_second(*args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictions, "_write_result", stop_at_the_second)
    images = str(demo_root / "fabric" / "test")
    args = ["predict", "--run", str(trained_run), images, "--out", str(tmp_path / "p"),
            "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 130
    assert not (tmp_path / "p").exists() or not any(
        p.name != ".refad.lock" for p in (tmp_path / "p").iterdir())
    monkeypatch.setattr(predictions, "_write_result", real)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output


def test_a_file_name_that_is_not_utf8_is_scored_and_written(
    trained_run: Path, tmp_path: Path, demo_root: Path
) -> None:
    """predictions.csv (and report.html) failed with UnicodeEncodeError after the work was
    done, leaving predictions.json without its CSV."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"\xff.png")  # a Latin-1 name on a UTF-8 system
    (folder / name).write_bytes(sorted(demo_root.glob("screw/test/good/*.png"))[0].read_bytes())
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder),
                                 "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    assert rows[0]["path"] == str(folder / name)  # JSON gives the exact name back
    assert "\\udcff.png" in (tmp_path / "p" / "predictions.csv").read_text(encoding="utf-8")


def test_a_path_longer_than_the_file_system_takes_is_one_line(
    demo_root: Path, tmp_path: Path
) -> None:
    """ENAMETOOLONG from pathlib (not among the errors it swallows) was a 60-line traceback."""
    long = "a" * 300
    for args in (["--root", str(tmp_path / long), "--out", str(tmp_path / "r")],
                 ["--root", str(demo_root), "--out", str(tmp_path / long)]):
        result = runner.invoke(app, ["train", *args, "--epochs", "1"])
        assert one_error_line(result).endswith("File name too long"), result.output


@pytest.mark.parametrize("folder", ["a[/]b", "data[v2]", "x[bold]y"])
def test_brackets_in_a_path_are_printed_as_they_are(tmp_path: Path, folder: str) -> None:
    """Console output was rich markup: `[/]` in a path raised a MarkupError after the work
    was done, and `[v2]` vanished from messages, which then named a file that does not
    exist."""
    run = tmp_path / folder / "no-run"
    result = runner.invoke(app, ["predict", "--run", str(run), str(tmp_path / "a.png"),
                                 "--out", str(tmp_path / "q" / "p")])
    assert one_error_line(result).startswith(f"error: {run}: ")


def test_run_saved_line_keeps_brackets(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run[/]x"
    result = runner.invoke(app, ["train", "--root", str(demo_root), "--out", str(out),
                                 "--epochs", "1", "--image-size", "64", "--weights", "none",
                                 "--backbone", "tf_efficientnet_lite2", "--batch-size", "8",
                                 "--set", "model.num_layers=1", "--set",
                                 "model.hidden_dims=[32,64]", "--set", "model.num_heads=4",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"run saved in {out}" in result.output.replace("\n", "")


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1",
                                 "--image-size", "64", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "**mean**" in result.output and "heatmaps" in result.output
    assert "defective images flagged" in result.output
    for category in ("fabric", "mesh", "screw"):
        assert list((tmp_path / "demo" / "heatmaps" / category).rglob("*_mask.png"))
        saved = json.loads(
            (tmp_path / "demo" / "heatmaps" / category / "predictions.json").read_text())
        assert saved["threshold_source"] == f"category:{category}"
    report = tmp_path / "demo" / "run" / "report.html"
    assert f"report: {report}" in result.output.replace("\n", "") and report.is_file()
    # a rerun continues the saved run: another size was ignored, with exit 0 and old figures
    metrics = (tmp_path / "demo" / "run" / "metrics.json").read_bytes()
    again = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1",
                                "--image-size", "96", "--device", "cpu", "--no-progress"])
    line = one_error_line(again)
    assert "holds a demo run of 1 epochs at 64 px" in line and "--image-size 96" in line
    assert "--epochs" not in line  # the same as saved
    assert (tmp_path / "demo" / "run" / "metrics.json").read_bytes() == metrics


@pytest.mark.parametrize("flag", ["--epochs", "--image-size"])
def test_demo_refuses_zero_instead_of_running_its_default(flag, tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), flag, "0"])
    assert flag in one_error_line(result)
    assert not (tmp_path / "d").exists()  # refused before any data is made


def test_predict_refuses_to_write_into_its_input_folder(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "a_heatmap.png")  # an input, not output
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for args in ([str(folder)], [str(folder / "a.png")]):
        result = runner.invoke(app, ["predict", "--run", str(tmp_path / "no-run-needed"), *args,
                                     "--out", str(folder)])
        assert "is the input folder" in one_error_line(result)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_predict_refuses_an_out_inside_a_folder_it_reads_recursively(tmp_path: Path) -> None:
    """Input folders are listed recursively: outputs written below one would be scored as
    inputs by the next predict on that folder."""
    folder = tmp_path / "inputs"
    (folder / "line1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "line1" / "a.png")
    for out in (folder / "results", folder / "line1" / "deeper" / "results"):
        result = runner.invoke(app, ["predict", "--run", str(tmp_path / "no-run-needed"),
                                     str(folder), "--out", str(out)])
        assert "inside the input folder" in one_error_line(result)
        assert not out.exists()
    # a file given directly reads nothing below its folder: a subfolder there is fine
    result = runner.invoke(app, ["predict", "--run", str(tmp_path / "no-run-needed"),
                                 str(folder / "line1" / "a.png"), "--out", str(folder / "r")])
    assert "input folder" not in result.output


@pytest.mark.parametrize("name", ["xpu", "meta", "mps", "banana", "cuda:99"])
def test_an_unsupported_device_is_one_line(trained_run: Path, name: str) -> None:
    result = runner.invoke(app, ["test", "--run", str(trained_run), "--device", name])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"device: {name!r}" in lines[0]


LATE_SIGNAL = """
import atexit, os, signal, sys, time
from refad.cli.main import {entry}
def late():  # the user's Ctrl-C (or a scheduler's SIGTERM) while the interpreter exits
    os.kill(os.getpid(), signal.{sig})
    time.sleep(0.3)
atexit.register(late)
sys.argv = ["refad", "report", "--help"]
{entry}()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_finished_does_not_fail_it(sig: str) -> None:
    """A Ctrl-C or SIGTERM in the moment after the work was done killed the process by the
    signal (status 143, or a KeyboardInterrupt traceback), so a script saw a failure."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LATE_SIGNAL.format(entry="main", sig=sig)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "Usage" in done.stdout and "Traceback" not in done.stderr, done.stderr
    # the program's own entry points are the guarded one
    for module in ("refad.__main__", "refad.cli.__main__"):
        source = Path(__import__("importlib").util.find_spec(module).origin).read_text()
        assert "main()" in source and "app()" not in source


def test_report_on_a_path_that_is_no_run_says_so(trained_run: Path, tmp_path: Path) -> None:
    """`refad report --run nosuch` said 'nosuch/metrics.json: missing; run refad test first',
    sending the user to test a run that does not exist; the other commands name the folder."""
    line = one_error_line(runner.invoke(app, ["report", "--run", str(tmp_path / "nosuch")]))
    assert "nosuch: not a refad run folder (no config.json)" in line
    untested = tmp_path / "untested"
    shutil.copytree(trained_run, untested)
    for name in ("metrics.json", "test_scores.json"):
        (untested / name).unlink(missing_ok=True)
    line = one_error_line(runner.invoke(app, ["report", "--run", str(untested)]))
    assert "metrics.json: missing; run `refad test" in line
