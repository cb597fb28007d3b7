"""`refad.deploy` and `refad predict --model` run in a Python where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refad.backbones import FeatureExtractor
from refad.export import export_model
from refad.models.base import FeatureSpec
from refad.models.registry import build_model

BLOCK_TORCH = r"""
import builtins, json, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "torchvision", "timm"):
        raise ModuleNotFoundError("torch is blocked in this test", name=name)
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
sys.modules["torch"] = None
import importlib.util
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
"""
SCRIPT = BLOCK_TORCH + r"""
from refad.deploy import Inferencer
inf = Inferencer(sys.argv[1], runtime="onnxruntime")
results = inf.predict([sys.argv[2], sys.argv[3]])
print(json.dumps({
    "scores": [r.score for r in results],
    "anomalous": [r.anomalous for r in results],
    "shape": list(results[0].anomaly_map.shape),
    "heat": list(results[0].heatmap.shape),
    "torch": any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items()
                 if v is not None),
}))
"""


def test_deploy_runs_without_torch(tmp_path: Path) -> None:
    size = 64
    ext = FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)
    spec = FeatureSpec(tuple(ext.levels), tuple(ext.channels), tuple(ext.output_shapes(size)),
                       size)
    torch.manual_seed(0)
    model = build_model("rlr", spec, {"num_layers": 1, "hidden_dims": [16, 32], "num_heads": 4})
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 255, (70, 60, 3), dtype=np.uint8) for _ in range(2)]
    paths = []
    for i, rgb in enumerate(rgbs):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    calib = {"unified": {"threshold": 1.0, "map_floor": 0.0, "map_ceiling": 2.0}}
    meta = export_model(ext, {"unified": model.eval()}, calib, {}, tmp_path / "export",
                        check_images=rgbs)
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "export"), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["shape"] == [70, 60] and out["heat"] == [70, 60, 3]
    from refad.deploy import Inferencer

    local = Inferencer(tmp_path / "export").predict(paths)
    assert out["scores"] == pytest.approx([r.score for r in local], rel=1e-6)
    assert out["anomalous"] == [r.anomalous for r in local]
    assert meta["units"]["unified"]["parity"]["passed"]


CLI_BODY = r"""
import sys
from refad.cli.main import app
try:
    app(sys.argv[1:])
finally:
    loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch"]
    print("TORCH-MODULES", loaded, file=sys.stderr)
"""
CLI = BLOCK_TORCH + CLI_BODY


def test_cli_predict_model_without_torch(trained_run: Path, demo_root: Path,
                                         tmp_path: Path) -> None:
    """The deploy install's own command, end to end: export here (torch), then score the demo's
    images with `refad predict --model` in a Python that cannot import torch; the files and
    decisions equal the run's own."""
    from typer.testing import CliRunner

    from refad.cli.main import app

    export = tmp_path / "onnx"
    result = CliRunner().invoke(app, ["export", "--run", str(trained_run), "--out", str(export)])
    assert result.exit_code == 0, result.output
    images = demo_root / "screw" / "test"
    cmd = [sys.executable, "-c", CLI, "predict", "--model", str(export), str(images),
           "--out", str(tmp_path / "free")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH-MODULES []" in proc.stderr
    # with torch installed, the exported-model path still never imports it (start-up time)
    plain = [sys.executable, "-c", CLI_BODY, *cmd[3:-1], str(tmp_path / "plain")]
    proc = subprocess.run(plain, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "TORCH-MODULES []" in proc.stderr, proc.stderr[-2000:]
    result = CliRunner().invoke(app, ["predict", "--run", str(trained_run), str(images),
                                      "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    free = json.loads((tmp_path / "free" / "predictions.json").read_text())["predictions"]
    ref = json.loads((tmp_path / "run" / "predictions.json").read_text())["predictions"]
    assert [r["relative_path"] for r in free] == [r["relative_path"] for r in ref]
    assert [r["anomalous"] for r in free] == [r["anomalous"] for r in ref]
    assert [r["score"] for r in free] == pytest.approx([r["score"] for r in ref], rel=1e-5)
    assert all(Path(r["overlay"]).is_file() for r in free)


def test_torch_command_without_torch_says_what_to_install(tmp_path: Path) -> None:
    """`refad test` needs PyTorch: without it, one line naming the extra, exit status 2."""
    cmd = [sys.executable, "-c", CLI, "test", "--run", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[0]
    assert "needs torch" in line and "pip install 'refad[torch]'" in line
