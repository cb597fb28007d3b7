"""A run folder's or an export's calibration is checked when it is opened, never trusted.

Each test here failed on the code before the shared checks of `refad.runs.recorded`: a
threshold of 0 in checkpoint.json called every image anomalous (exit 0), an inverted colour
range was taken, a tensor file named outside the run folder was read, and an export's category
without a threshold was decided at the global one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from refad.backbones import FeatureExtractor
from refad.cli.main import app
from refad.deploy import METADATA_FILE, Inferencer
from refad.deploy.metadata import seal
from refad.errors import CheckpointError
from refad.export import export_model
from refad.models.authors import load_authors_file
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.runs import check_scorable

runner = CliRunner()
Edit = Callable[[dict[str, Any]], None]


def one_line(result: Any) -> str:
    """The single non-blank line a refusal prints (asserted), for its words to be checked."""
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def edited_run(trained_run: Path, tmp_path: Path, edit: Edit) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for written in ("metrics.json", "metrics.md", "test_scores.json", "report.html"):
        (run / written).unlink(missing_ok=True)  # other tests evaluate the shared run
    meta = json.loads((run / "checkpoint.json").read_text())
    edit(meta)
    (run / "checkpoint.json").write_text(json.dumps(meta))
    return run


def taken_port() -> tuple[socket.socket, str]:
    """A listening socket: `refad serve` that got past its checks fails to bind (and ends)
    instead of serving forever."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, str(sock.getsockname()[1])


def _set(path: str, value: Any) -> Edit:
    *parents, last = path.split(".")

    def edit(meta: dict[str, Any]) -> None:
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _both(*edits: Edit) -> Edit:
    def edit(meta: dict[str, Any]) -> None:
        for e in edits:
            e(meta)
    return edit


CALIBRATION_EDITS = [
    (_set("calibration.threshold", 0), "calibration.threshold: must be above 0"),
    (_set("calibration.threshold", -1.5), "calibration.threshold: must be above 0"),
    (_set("calibration.categories.fabric.threshold", 0.0),
     "calibration.categories.fabric.threshold: must be above 0"),
    (_set("calibration.pixel_threshold", 0), "calibration.pixel_threshold: must be above 0"),
    (_set("calibration.categories.fabric.pixel_threshold", -2.0),
     "calibration.categories.fabric.pixel_threshold: must be above 0"),
    (_both(_set("calibration.map_floor", 5.0), _set("calibration.map_ceiling", 1.0)),
     "calibration: map_floor 5.0 and map_ceiling 1.0 are no colour range"),
    (_both(_set("calibration.map_floor", 1.0), _set("calibration.map_ceiling", 1.0)),
     "calibration: map_floor 1.0 and map_ceiling 1.0 are no colour range"),
    (_set("calibration.categories.fabric.map_floor", 1e9),
     "calibration.categories.fabric: map_floor 1000000000.0 and map_ceiling"),
    # a category named without a threshold was decided at the global one, silently
    (lambda m: m["calibration"]["categories"]["fabric"].pop("threshold"),
     "calibration.categories.fabric.threshold: missing"),
]


@pytest.mark.parametrize("edit, words", CALIBRATION_EDITS)
def test_calibration_no_run_could_write_is_refused_by_every_command(
    trained_run: Path, demo_root: Path, tmp_path: Path, edit: Edit, words: str
) -> None:
    """checkpoint.json is plain JSON: a threshold of 0 called every image anomalous (exit 0),
    an inverted colour range painted heatmaps one colour. The export already refused both."""
    run = edited_run(trained_run, tmp_path, edit)
    image = str(demo_root / "fabric" / "test" / "good" / "000.png")
    sock, port = taken_port()
    with sock:
        for command in (["test", "--run", str(run), "--no-report"],
                        ["predict", "--run", str(run), image, "--out", str(tmp_path / "preds"),
                         "--category", "fabric"],
                        ["serve", "--run", str(run), "--port", port]):
            line = one_line(runner.invoke(app, command))
            assert f"{run / 'checkpoint.json'}: {words}" in line, (command, line)
    assert not (tmp_path / "preds").exists() and not (run / "metrics.json").exists()


@pytest.mark.parametrize("name", ["ABS", "../x.safetensors", "/dev/zero", "", "..",
                                  "sub/model.safetensors", "a\x00b"])
@pytest.mark.parametrize("kind", ["model", "optimizer"])
def test_a_tensor_file_named_outside_the_run_folder_is_refused(
    trained_run: Path, tmp_path: Path, name: str, kind: str
) -> None:
    """The manifest's names were joined to the run folder as given: an absolute path or
    `../` read a file elsewhere (`/dev/zero`: until memory ran out)."""
    outside = tmp_path / "elsewhere.safetensors"
    name = str(outside) if name == "ABS" else name

    def edit(meta: dict[str, Any]) -> None:
        meta["files"][kind]["name"] = name
    run = edited_run(trained_run, tmp_path, edit)
    original = trained_run / json.loads((trained_run / "checkpoint.json").read_text())[
        "files"][kind]["name"]
    for copy in (outside, run.parent / "x.safetensors"):  # same bytes: the checksum passes
        shutil.copy(original, copy)
    with pytest.raises(CheckpointError) as info:
        check_scorable(run)
    assert f"{run / 'checkpoint.json'}: files.{kind}.name: " in str(info.value)
    assert "not a file name in the run folder" in str(info.value)
    if kind == "model" and name in (str(outside), "../x.safetensors"):  # read, and scored
        line = one_line(runner.invoke(app, ["test", "--run", str(run), "--no-report"]))
        assert f"checkpoint.json: files.model.name: {name!r}" in line


def _limit_memory() -> None:  # before the fix, the read below ran until memory ran out
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_a_tensor_file_linked_to_a_device_is_refused_not_read(
    trained_run: Path, tmp_path: Path
) -> None:
    """A name inside the folder, but a link to /dev/zero: read whole before its checksum was
    compared, it never ended (MemoryError under a limit, the machine's memory without)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    name = json.loads((run / "checkpoint.json").read_text())["files"]["model"]["name"]
    (run / name).unlink()
    (run / name).symlink_to("/dev/zero")
    done = subprocess.run([sys.executable, "-m", "refad", "test", "--run", str(run),
                           "--no-report"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_memory)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and lines == [f"error: {run / name}: not a regular file"], (
        done.stderr[-2000:])


# ------------------------------------------------------------------------------ exports


@pytest.fixture(scope="module")
def export_with_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unified export whose calibration names categories `a` and `b`."""
    ext = FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)
    spec = FeatureSpec(tuple(ext.levels), tuple(ext.channels), tuple(ext.output_shapes(64)), 64)
    torch.manual_seed(0)
    model = build_model("rlr", spec, {"num_layers": 1, "hidden_dims": [16, 32], "num_heads": 4})
    rgbs = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            for i in range(2)]
    calib = {"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0,
             "categories": {"a": {"threshold": 1.5}, "b": {"threshold": 0.7}}}
    out = tmp_path_factory.mktemp("exports") / "onnx"
    export_model(ext, {"unified": model.eval()}, {"unified": calib}, {}, out,
                 check_images=rgbs)
    return out


def test_an_export_category_without_a_threshold_is_refused_at_load(
    export_with_categories: Path, tmp_path: Path
) -> None:
    """A category named in the metadata (so `--category b` was accepted) but without a
    threshold was decided at the unit's global threshold, reported as "global"."""
    folder = tmp_path / "broken"
    shutil.copytree(export_with_categories, folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    del meta["units"]["unified"]["categories"]["b"]["threshold"]
    (folder / METADATA_FILE).write_text(json.dumps(seal(meta)))  # a foreign, sealed writer
    words = "units.unified.categories.b.threshold: missing"
    with pytest.raises(CheckpointError, match=words):
        Inferencer(folder)
    image = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 127, np.uint8)).save(image)
    line = one_line(runner.invoke(app, ["predict", "--model", str(folder), str(image),
                                        "--category", "b", "--out", str(tmp_path / "preds")]))
    assert f"{folder / METADATA_FILE}: {words}" in line
    assert not (tmp_path / "preds").exists()


def test_an_export_names_no_file_outside_its_folder(
    export_with_categories: Path, tmp_path: Path
) -> None:
    """The same file-name rule as a run folder's manifest (one check, both readers)."""
    folder = tmp_path / "foreign"
    shutil.copytree(export_with_categories, folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    unit = meta["units"]["unified"]
    unit["files"]["../x.onnx"] = unit["files"][unit["graph"]]
    (folder / METADATA_FILE).write_text(json.dumps(seal(meta)))
    with pytest.raises(CheckpointError, match=r"units\.unified\.files: '\.\./x\.onnx' is not a "
                                              "file name in the export folder"):
        Inferencer(folder)


@pytest.mark.parametrize("calib, words", [
    ({"threshold": 0.0, "map_floor": 0.1, "map_ceiling": 2.0},
     r"calibration\.unified\.threshold: must be above 0"),
    ({"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0,
      "categories": {"a": {"pixel_threshold": 1.5}}},
     r"calibration\.unified\.categories\.a\.threshold: missing"),
])
def test_export_never_writes_a_calibration_its_reader_refuses(
    tmp_path: Path, calib: dict[str, Any], words: str
) -> None:
    """`export_model` wrote such a folder (sealed), which every reader then refused."""
    ext = FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)
    spec = FeatureSpec(tuple(ext.levels), tuple(ext.channels), tuple(ext.output_shapes(64)), 64)
    model = build_model("rlr", spec, {"num_layers": 1, "hidden_dims": [16, 32], "num_heads": 4})
    rgbs = [np.zeros((64, 64, 3), np.uint8)]
    with pytest.raises(CheckpointError, match=words):
        export_model(ext, {"unified": model.eval()}, {"unified": calib}, {}, tmp_path / "out",
                     check_images=rgbs)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ torch's words in refusals


def _truncated_zip(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(64)}}, path)
    path.write_bytes(path.read_bytes()[:-30])


def _blocked_global(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(4)}, "hook": os.system}, path)


def _blocked_global_legacy(path: Path) -> None:
    torch.save({"hook": os.system}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("make, words", [
    (_blocked_global, f"refused, holds an object other than tensors and plain data (global "
                      f"{os.system.__module__}.system)"),
    (_blocked_global_legacy, "refused, holds an object other than tensors and plain data "
                             f"(global {os.system.__module__}.system)"),
    (_truncated_zip, "not a readable torch checkpoint (RuntimeError: PytorchStreamReader failed "
                     "reading zip archive: failed finding central directory)"),
])
def test_a_refused_authors_file_is_one_clean_line(
    tmp_path: Path, make: Callable[[Path], None], words: str
) -> None:
    """torch's advice ("Re-running torch.load with weights_only set to False ...", "If you
    are seeing this error ...") was the detail of two refusals, cut off mid-sentence."""
    path = tmp_path / "ckpt.pth"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_authors_file(path)
    message = str(info.value)
    assert message == f"{path}: {words}" or message.startswith(f"{path}: {words}"), message
    for advice in ("weights_only", "If you are seeing", "trusted source", "\n"):
        assert advice not in message
    # a real process: torch's warnings on stderr would show beside the line
    done = subprocess.run([sys.executable, "-m", "refad", "import-authors", "--method", "rlr",
                           "--checkpoint", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and lines == [f"error: {message}"], done.stderr


def test_a_zip_that_is_no_torch_checkpoint_is_one_clean_line(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"junk")
    with pytest.raises(CheckpointError) as info:
        load_authors_file(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
