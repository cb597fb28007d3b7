"""`refad export` from a run folder, then `refad predict --model`: the same files and the
same decisions as `refad predict --run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import refad.reporting.predictions
from refad.cli.main import app

runner = CliRunner()


def test_predict_with_an_export_writes_what_the_run_writes(
    trained_run: Path, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _lower_pixel_thresholds(run)  # so that masks and regions are there to compare
    export = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(export)])
    assert result.exit_code == 0, result.output
    parity = json.loads((export / "refad-deploy.json").read_text())["units"]["unified"]["parity"]
    said = " ".join(result.output.split())
    assert f"map max diff {parity['map_max_rel']:.1e} of range" in said
    assert f"decision flips {parity['decision_flips']}" in said
    images = demo_root / "fabric" / "test"
    # both paths go through refad's one result step, once per image
    calls: list[str] = []
    one_step = refad.reporting.predictions.postprocess

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(flag)
        return one_step(*args, **kwargs)

    monkeypatch.setattr(refad.reporting.predictions, "postprocess", counted)
    for flag, folder, out in (("--run", run, "by-run"), ("--model", export, "by-model")):
        result = runner.invoke(app, ["predict", flag, str(folder), str(images), "--out",
                                     str(tmp_path / out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    by_run = json.loads((tmp_path / "by-run" / "predictions.json").read_text())
    by_model = json.loads((tmp_path / "by-model" / "predictions.json").read_text())
    assert len(by_run["predictions"]) == len(by_model["predictions"]) > 0
    assert by_run["threshold"] == by_model["threshold"]
    assert calls.count("--run") == calls.count("--model") == len(by_run["predictions"])
    for key in ("threshold_source", "pixel_threshold", "calibration_images", "category"):
        assert by_run[key] == by_model[key], key
    # what computed the scores is said (a bf16 export on a CPU without bf16 runs in f32)
    assert by_run["scored_with"] == "pytorch on cpu"
    assert by_model["scored_with"] == "onnxruntime, fp32 export, f32 arithmetic on cpu"
    for a, b in zip(by_run["predictions"], by_model["predictions"], strict=True):
        assert a["relative_path"] == b["relative_path"]
        assert abs(a["score"] - b["score"]) <= 1e-5 * abs(a["score"])
        assert a["anomalous"] == b["anomalous"]
        assert a["normalised_score"] == pytest.approx(b["normalised_score"], rel=1e-5)
        assert (a["threshold_source"], a["note"]) == (b["threshold_source"], b["note"])
        # the same defect masks, pixel for pixel, and the same regions (peaks within 1e-5)
        assert a["defect_pixels"] == b["defect_pixels"] is not None
        assert np.array_equal(np.asarray(Image.open(a["mask"])), np.asarray(Image.open(b["mask"])))
        assert [{**r, "peak": 0} for r in a["regions"]] == [{**r, "peak": 0} for r in b["regions"]]
        for ra, rb in zip(a["regions"], b["regions"], strict=True):
            assert ra["peak"] == pytest.approx(rb["peak"], rel=1e-5)
        assert Path(b["heatmap"]).is_file() and Path(b["overlay"]).is_file()
    assert any(row["regions"] for row in by_run["predictions"])  # a defect was outlined
    files = {p.relative_to(tmp_path / "by-run") for p in (tmp_path / "by-run").rglob("*.png")}
    assert files == {p.relative_to(tmp_path / "by-model")
                     for p in (tmp_path / "by-model").rglob("*.png")}
    result = runner.invoke(app, ["predict", "--run", str(run), "--model", str(export),
                                 str(images), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "exactly one of --run and --model" in result.output
    # flags that would be ignored are refused; `auto`, every command's device, works here too
    for args, words in ((["--model", str(export), "--amp"], "--amp: has no effect with --model"),
                        (["--model", str(export), "--compile", "default"], "--compile: has no"),
                        (["--run", str(run), "--runtime", "openvino"], "--runtime: has no"),
                        (["--model", str(export), "--device", ""], "device: '' is not one")):
        result = runner.invoke(app, ["predict", *args, str(images), "--out", str(tmp_path / "y")])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
        assert not (tmp_path / "y").exists()
    result = runner.invoke(app, ["predict", "--model", str(export), str(images), "--out",
                                 str(tmp_path / "auto"), "--device", "auto"])
    assert result.exit_code == 0, result.output


def _lower_pixel_thresholds(run: Path) -> None:
    """Every pixel threshold halfway up the lowest calibrated colour range (fabric's): the
    global one, which decides images of no category, marks no pixel of the demo's fabric
    images, and a comparison of empty masks would show nothing."""
    manifest = run / "checkpoint.json"
    data = json.loads(manifest.read_text())
    sets = [data["calibration"], *data["calibration"]["categories"].values()]
    low = min(v["map_floor"] + 0.5 * (v["map_ceiling"] - v["map_floor"]) for v in sets)
    for values in sets:
        values["pixel_threshold"] = low
    manifest.write_text(json.dumps(data, indent=2))


def test_export_destination_problems_are_one_line_before_any_work(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    import refad.atomic

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("user file")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = refad.atomic.writable
    monkeypatch.setattr(refad.atomic, "writable", lambda f: real(f) and Path(f) != locked)
    for out, expected in ((taken, f"{taken}: folder is not empty (holds 'keep.txt') and was not "
                                  "written by refad export"),
                          (a_file, f"{a_file}: exists and is not a folder"),
                          (a_file / "x", f"{a_file}: exists and is not a folder"),
                          (locked / "x", f"{locked}: folder is not writable")):
        result = runner.invoke(app, ["export", "--run", str(trained_run), "--out", str(out)])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert expected in lines[0]
    assert (taken / "keep.txt").read_text() == "user file"
    result = runner.invoke(app, ["export", "--run", str(trained_run), "--out", str(taken),
                                 "--overwrite"])  # replaces an earlier export only (it emptied any)
    assert result.exit_code == 2 and "--overwrite replaces only an earlier export" in result.output
    assert (taken / "keep.txt").read_text() == "user file"
