"""One scoring path: `refad test` / `predict` with --compile and --amp go through the Scorer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from refad import api
from refad.cli.main import app
from refad.inference import Scorer
from refad.inference import scorer as scorer_module

runner = CliRunner()


def test_test_and_predict_score_through_the_scorer(
    trained_run: Path, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[str | None, bool]] = []
    real_init = Scorer.__init__

    def spy(self, *args, **kwargs):  # record how each Scorer is built, then build it
        real_init(self, *args, **kwargs)
        made.append((self.compile_mode, kwargs.get("amp", args[3] if len(args) > 3 else None)))

    monkeypatch.setattr(scorer_module.Scorer, "__init__", spy)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["test", "--run", str(run), "--no-progress", "--device", "cpu",
                                 "--compile", "none", "--amp"])
    assert result.exit_code == 0, result.output
    assert made and all(m == (None, True) for m in made)
    made.clear()
    image = sorted(demo_root.glob("fabric/test/*/*.png"))[0]
    result = runner.invoke(app, ["predict", "--run", str(run), str(image), "--out",
                                 str(tmp_path / "p"), "--device", "cpu", "--compile", "none"])
    assert result.exit_code == 0, result.output
    assert made == [(None, False)]
    result = runner.invoke(app, ["test", "--run", str(run), "--compile", "fastest"])
    assert result.exit_code == 2 and "compile" in result.output


def test_compiled_scoring_equals_eager(trained_run: Path) -> None:
    """`--compile default` changes how scoring runs, not the metrics (CPU, float tolerance)."""
    eager = api.scorer(trained_run, device="cpu")
    compiled = api.scorer(trained_run, device="cpu", compile_mode="default")
    images = torch.randn(2, 3, 64, 64)
    a, b = eager.images(images), compiled.images(images)
    assert torch.allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5)
    assert torch.allclose(a.image, b.image, rtol=1e-4, atol=1e-6)
