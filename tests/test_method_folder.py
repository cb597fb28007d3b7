"""A new method is one folder: `tests/toy_methods/mean_distance/` registers itself (config,
preset, smallest settings) and goes through every command without a line changed elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refad.cli.main import app
from refad.config import METHODS, PRESETS

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FOLDER = Path(__file__).parent / "toy_methods" / "mean_distance"


def test_nothing_outside_the_method_folder_names_it() -> None:
    """The registry is the only list of methods: no other file of the package or the tests
    mentions the toy method (this file and conftest's import of the folder aside)."""
    allowed = {Path(__file__).resolve(), (Path(__file__).parent / "conftest.py").resolve()}
    named = [p for top in ("src", "tests") for p in (REPO / top).rglob("*.py")
             if FOLDER not in p.resolve().parents and p.resolve() not in allowed
             and "mean_distance" in p.read_text()]
    assert not named, named
    assert "mean_distance" in METHODS and "mean_distance" in PRESETS


@pytest.fixture(scope="module")
def toy_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    result = runner.invoke(app, ["train", "--method", "mean_distance", "--root", str(demo_root),
                                 "--weights", "none", "--device", "cpu", "--out", str(run),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return run


def test_the_method_is_listed_and_trains(toy_run: Path) -> None:
    assert "mean_distance" in runner.invoke(app, ["train", "--help"]).output
    config = json.loads((toy_run / "config.json").read_text())
    assert config["method"] == "mean_distance" and config["model"]["sigma"] == 2.0


def test_the_method_tests_predicts_and_exports(toy_run: Path, demo_root: Path,
                                                tmp_path: Path) -> None:
    result = runner.invoke(app, ["test", "--run", str(toy_run), "--no-report"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert 0 <= metrics["mean"]["i_auroc"] <= 1
    image = next((demo_root / "mesh" / "test").rglob("*.png"))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "--run", str(toy_run), str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "predictions.json").is_file()
    result = runner.invoke(app, ["export", "--run", str(toy_run), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    deploy = json.loads((tmp_path / "exp" / "refad-deploy.json").read_text())
    assert deploy["method"] == "mean_distance"


def test_a_bad_value_of_the_new_method_is_one_line(demo_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--method", "mean_distance", "--root", str(demo_root),
                                 "--weights", "none", "--out", str(tmp_path / "run"),
                                 "--set", "model.sigma=-1"])
    assert result.exit_code == 2 and "model.sigma" in result.output, result.output
