"""Faults round 3 (issue 34): sizes without bounds, a field given twice, huge config files,
FIFOs and links among the inputs. Each is one line `error: ...` (exit 2) before any work."""

from __future__ import annotations

import os
import shutil
import time
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import refad.api
from refad.cli.main import app
from refad.config import RunConfig, apply_overrides, build_config, load_config_file
from refad.config.base import StrictModel
from refad.config.methods import METHOD_CONFIGS
from refad.config.presets import preset
from refad.config.schema import DATA_LAYOUTS, BackboneConfig, TrainConfig
from refad.data import load_split
from refad.data.splits import collect_images
from refad.errors import ConfigError, DataError
from refad.inference.batches import scored_batches

runner = CliRunner()
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """`refad train` reaches `fit` only with a valid config; record instead of training."""
    seen: list[RunConfig] = []
    monkeypatch.setattr(refad.api, "fit", lambda config, *a, **k: seen.append(config) or [])
    return seen


# --- 1. every size field has a range -------------------------------------------------------

def _int_kind(annotation: Any) -> str | None:
    """'int', 'list' (of ints) or 'dict' (int -> int) for a size field, else None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {_int_kind(a) for a in args} - {None}
        return kinds.pop() if kinds else None
    if annotation is int:
        return "int"
    if typing.get_origin(annotation) is list and args == (int,):
        return "list"
    if typing.get_origin(annotation) is dict and args == (int, int):
        return "dict"
    return None


def _size_fields() -> list[tuple[str, str, str]]:
    """(method, field path, kind) of every integer field of the schema and of every method."""
    sections: list[tuple[str, type[StrictModel]]] = [
        ("train", TrainConfig), ("backbone", BackboneConfig),
        *(("data", cls) for cls in DATA_LAYOUTS.values()),
    ]
    out = [("rlr" if section != "data" else f"rlr:{cls.__name__}", f"{section}.{name}", kind)
           for section, cls in sections for name, f in cls.model_fields.items()
           if (kind := _int_kind(f.annotation))]
    out += [(method, f"model.{name}", kind) for method, cls in METHOD_CONFIGS.items()
            for name, f in cls.model_fields.items() if (kind := _int_kind(f.annotation))]
    return sorted(set(out))


HUGE = 10**12 + 1  # odd: an odd-only kernel field must fail for its size, not its parity


@pytest.mark.parametrize("method, path, kind", _size_fields())
def test_every_size_field_has_an_upper_bound(method: str, path: str, kind: str) -> None:
    """A typo of a size (100000 for 10) used to run into a division by zero or a terabyte
    allocation deep inside the model; every integer field now has a range."""
    method, _, layout = method.partition(":")
    data = {"kind": next(k for k, c in DATA_LAYOUTS.items() if c.__name__ == layout)} \
        if layout else {}
    value: Any = {"int": HUGE, "list": [HUGE, HUGE], "dict": {16: HUGE}}[kind]
    section, field = path.split(".")
    config: dict[str, Any] = {"method": method, "data": data, section: {field: value}}
    if section == "data":
        config["data"] = {**data, field: value}
    with pytest.raises(ConfigError, match=rf"config: {section}\.{field}\b"):
        RunConfig.parse(config)


@pytest.mark.parametrize("method, override, expected", [
    ("rlr", "model.hidden_dims=[0,0]", "model.hidden_dims.0: Input should be greater"),
    ("rlr", "model.hidden_dims=[]", "model.hidden_dims: List should have at least 1 item"),
    ("rlr", "model.hidden_dims=[32]", "model.hidden_dims: 1 width(s) for 2 backbone levels"),
    ("rlr", "model.hidden_dims=[36, 64]", "model.hidden_dims: width 36 is not divisible by "
                                          "model.num_heads 8"),
    ("rlr", "model.num_heads=3", "model.num_heads: 3 does not divide the hidden width 256"),
    ("rlr", "model.windows={}", "model.windows: Dictionary should have at least 1 item"),
    ("rlr", "model.windows={\"16\": 6}", "model.windows: window 6 for 16x16 maps must be odd"),
    ("rlr", "model.windows={\"16\": 17}", "model.windows: window 17 for 16x16 maps must be "
                                          "narrower than the map"),
    ("rlr", "model.windows={\"0\": 5}", "model.windows.0"),
    ("crad", "model.local_grid=100000", "model.local_grid: Input should be less than or equal"),
    ("crad", "model.global_grid=1000", "model.global_grid: Input should be less than or equal"),
    ("crad", "model.grid_level=3", "model.grid_level: 3 is out of range for 2 feature level"),
    ("uniad", "model.hidden_dim=30", "model.hidden_dim: 30 is not divisible by model.num_heads"),
    ("uniad", "model.num_heads=100000", "model.num_heads: Input should be less than or equal"),
])
def test_bad_sizes_are_one_line_errors(method: str, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(preset(method), [override])
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("override: model.")


def test_a_bad_size_stops_train_before_any_work(
    demo_root: Path, tmp_path: Path, no_training: list[RunConfig]
) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(demo_root), "--set", "model.hidden_dims=[0,0]"])
    assert "model.hidden_dims.0: Input should be greater" in one_error_line(result)
    assert not no_training and not (tmp_path / "run").exists()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(demo_root), "--method", "crad",
                                 "--set", "model.local_grid=100000"])
    assert "model.local_grid" in one_error_line(result) and not no_training


# --- 2. a field is given once --------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--epochs", "3", "--set", "train.epochs=5"],
     "train.epochs: given by --epochs and by --set train.epochs=5"),
    (["--set", "train.epochs=3", "--set", "train.epochs=5"],
     "train.epochs: given twice (train.epochs=3, then train.epochs=5)"),
    (["--image-size", "64", "--set", "data.image_size=128"],
     "data.image_size: given by --image-size and by --set data.image_size=128"),
    (["--device", "cpu", "--set", "device=auto"], "device: given by --device and by --set"),
    (["--amp", "--set", "train.amp=false"], "train.amp: given by --amp and by --set"),
    (["--compile", "default", "--set", "train.compile=none"],
     "train.compile: given by --compile and by --set"),
    (["--set", "train={\"epochs\": 3}", "--set", "train.epochs=5"],
     "train.epochs: given twice (train={\"epochs\": 3}, then train.epochs=5)"),
])
def test_a_field_given_twice_is_refused(
    demo_root: Path, tmp_path: Path, no_training: list[RunConfig], args: list[str],
    expected: str
) -> None:
    """The last of the two silently won (`--epochs 3 --set train.epochs=5` trained 5)."""
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                 str(demo_root), *args])
    assert expected in one_error_line(result)
    assert not no_training


def test_a_field_given_twice_in_the_api_and_compare(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.epochs: given twice"):
        apply_overrides(preset("rlr"), ["train.epochs=3", "train.epochs=5"])
    with pytest.raises(ConfigError, match=r"train.epochs: given by --epochs"):
        build_config(epochs=3, overrides=["train.epochs=5"])
    result = runner.invoke(app, ["compare", "--out", str(tmp_path / "cmp"), "--methods", "crad",
                                 "--epochs", "3", "--set", "train.epochs=5"])
    assert "train.epochs: given by --epochs" in one_error_line(result)
    # one flag or one --set alone still sets the field; a config file's value is replaced
    assert build_config(epochs=3).train.epochs == 3
    assert build_config(overrides=["train.epochs=5"]).train.epochs == 5
    assert build_config(base=build_config(device="cpu")).device == "cpu"


# --- 3. config files are small -------------------------------------------------------------

@pytest.mark.parametrize("name", ["big.yaml", "big.json"])
def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path: Path, name: str) -> None:
    """A 50 MB YAML file was parsed for 4 minutes and 5 GB before being refused."""
    path = tmp_path / name
    padding = ("# " + "x" * 1000 + "\n") * 1100 if name.endswith("yaml") else " " * 1_100_000
    path.write_text(padding + '{"train": {"epochs": 1}}\n')
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"{name}: 1\.\d MB is more than the 1 MB a config "
                                          "file may hold"):
        load_config_file(path)
    assert time.perf_counter() - start < 1.0


@needs_fifo
def test_a_fifo_as_config_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="config.yaml: not a regular file"):
        load_config_file(fifo)


# --- 4. FIFOs and links among the inputs ---------------------------------------------------

def _png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)
    return path


def _fake_score(images: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    return np.zeros((len(images), 8, 8), np.float32), [float(i) for i in range(len(images))]


def _run(inputs: list[Path]) -> tuple[list[Path], list[str], list[str]]:
    results, failures, notes = [], [], []
    for batch in scored_batches(inputs, 4, _fake_score):
        results += [r.path for r in batch.results]
        failures += batch.failures
        notes += getattr(batch, "notes", [])  # absent before the notes were added
    return results, failures, notes


@needs_fifo
def test_a_fifo_among_predict_inputs_is_a_failure_not_a_silence(tmp_path: Path) -> None:
    """A FIFO named like an image in a folder was skipped without a word; given by name it
    was 'no such file or folder'. Neither is opened (that would wait for a writer)."""
    good = _png(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "pipe.png")
    results, failures, _ = _run([tmp_path / "in"])
    assert results == [good]
    assert failures == [f"{tmp_path / 'in' / 'pipe.png'}: not a regular file"]
    results, failures, _ = _run([good, tmp_path / "in" / "pipe.png"])
    assert results == [good] and failures == [f"{tmp_path / 'in' / 'pipe.png'}: not a regular file"]


def test_a_file_reached_twice_through_links_is_scored_once(tmp_path: Path) -> None:
    good = _png(tmp_path / "in" / "a.png")
    other = _png(tmp_path / "in" / "b.png", 30)
    (tmp_path / "l1.png").symlink_to(good)
    (tmp_path / "l2.png").symlink_to(good)
    results, failures, notes = _run([tmp_path / "l1.png", tmp_path / "l2.png"])
    assert results == [tmp_path / "l1.png"] and not failures
    assert notes == [f"{tmp_path / 'l2.png'}: the same file as {tmp_path / 'l1.png'}; "
                     "scored once"]
    results, _, notes = _run([tmp_path / "in", tmp_path / "l1.png"])
    assert results == [good, other] and len(notes) == 1
    assert collect_images([tmp_path / "in", tmp_path / "l2.png", good]) == [good, other]


@needs_fifo
def test_predict_cli_names_the_fifo_and_scores_a_linked_file_once(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted(demo_root.glob("screw/test/good/*.png"))[0], folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    (tmp_path / "link.png").symlink_to(folder / "a.png")
    result = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder),
                                 str(tmp_path / "link.png"), "--out", str(tmp_path / "p"),
                                 "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "1 images scored" in result.output
    assert f"{folder / 'pipe.png'}: not a regular file" in result.output
    assert f"{tmp_path / 'link.png'}: the same file as {folder / 'a.png'}; scored once" \
        in " ".join(result.output.split())


@needs_fifo
@pytest.mark.parametrize("where", ["train/good", "test/missing", "ground_truth/missing"])
def test_a_fifo_in_a_dataset_folder_is_named(demo_root: Path, tmp_path: Path, where: str) -> None:
    """Training skipped it without a word (and hashing it for the cache would wait forever)."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "screw", root / "screw")
    folder = root / "screw" / where
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "zz_pipe.png")
    with pytest.raises(DataError, match=r"zz_pipe.png: not a regular file$"):
        load_split({"kind": "mvtec", "root": str(root)}, "test" if "test" in where or
                   "ground" in where else "train")


@needs_fifo
def test_a_fifo_in_a_plain_folder_or_visa_csv_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good"
    for i in range(2):
        _png(good / f"{i}.png")
    os.mkfifo(good / "pipe.png")
    with pytest.raises(DataError, match="pipe.png: not a regular file"):
        load_split({"kind": "folder", "normal_dir": str(good)}, "train")
    root = tmp_path / "visa"
    _png(root / "pcb" / "0.png")
    os.mkfifo(root / "pcb" / "1.png")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\npcb,train,normal,pcb/0.png,\npcb,train,normal,pcb/1.png,\n")
    with pytest.raises(DataError, match=r"1.png: not a regular file \(listed in "):
        load_split({"kind": "visa", "root": str(root)}, "train")
