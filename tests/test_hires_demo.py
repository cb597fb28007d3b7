"""`refad demo --hires`: the high-resolution product fitted resized and tiled, compared on the
same test pictures; and the one-line refusals of a demo folder that holds the other demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refad.api import HiresDemoSettings, run_hires_demo
from refad.cli.main import app
from refad.data import make_demo_dataset

runner = CliRunner()
SMALL = HiresDemoSettings(size=128, input_size=64, n_train=8, n_test_good=2, n_test_defect=2,
                          backbone="tf_efficientnet_lite0", weights="none")


def test_the_hires_demo_fits_both_runs_and_compares_them(tmp_path: Path) -> None:
    lines: list[str] = []
    results = run_hires_demo(tmp_path / "hires", device="cpu", progress=False,
                             echo=lines.append, settings=SMALL)
    assert set(results) == {"resized", "tiled"}
    tiling = {tag: json.loads((tmp_path / "hires" / tag / "config.json").read_text())
              ["data"].get("tiling") for tag in results}
    assert tiling["resized"] is None
    assert tiling["tiled"] == {"overlap": 0.25, "scale": 1.0}
    for result in results.values():
        decided = result["decisions"]["categories"]["wafer"]
        assert decided["tp"] + decided["fn"] == 2 and decided["fp"] + decided["tn"] == 2
        assert result["fit_s"] > 0
    table = lines[0].splitlines()
    assert table[2].startswith("| resized to 64 px |")
    assert table[3].startswith("| native, 64-px tiles (overlap 0.25) |")
    masks = sorted((tmp_path / "hires" / "heatmaps" / "wafer").rglob("*mask*.png"))
    assert len(masks) == 2  # one per defective test picture, from the tiled run
    assert (tmp_path / "hires" / "tiled" / "report.html").is_file()


def test_hires_refuses_the_schedule_flags() -> None:
    result = runner.invoke(app, ["demo", "--hires", "--epochs", "3", "--out", "unused"])
    assert result.exit_code == 2
    assert "--epochs: not used by --hires" in result.output
    assert not Path("unused").exists()


@pytest.mark.parametrize("hires_data", [False, True])
def test_a_folder_holding_the_other_demo_is_refused(tmp_path: Path, hires_data: bool) -> None:
    out = tmp_path / "demo"
    categories = ["wafer"] if hires_data else ["fabric"]
    make_demo_dataset(out / "data", categories=categories, n_train=2, n_test_good=1,
                      n_test_defect=1, size=64, seed=0)
    flags = [] if hires_data else ["--hires"]
    result = runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu", *flags])
    assert result.exit_code == 2, result.output
    assert "choose another --out" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (out / "run").exists() and not (out / "resized").exists()
