"""CUDA paths give the CPU's results within float tolerance (run where a GPU is present).

CI has no GPU, so these are skipped there; the device machine runs them, and the closing
notes and benchmark files report the outcome.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import SMALL_MODELS, rel_err, tiny_config
from safetensors.torch import load_file

from refad.api import evaluate
from refad.inference import score_levels
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.runs import RunDir
from refad.training import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

SPEC = FeatureSpec((2, 3), (12, 20), ((8, 8), (4, 4)), 32)


@pytest.fixture(autouse=True)
def _strict_float32():
    """TF32 matmuls would make CUDA differ from the CPU by ~1e-3: tests compare true fp32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("method", sorted(SMALL_MODELS))
def test_scores_on_cuda_equal_cpu(method: str) -> None:
    torch.manual_seed(0)
    model = build_model(method, SPEC, SMALL_MODELS[method]).eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(3, c, h, w, generator=g).abs()
             for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)]
    with torch.inference_mode():
        want = model.score(feats)
        model_gpu = model.to("cuda")
        got = model_gpu.score([f.to("cuda") for f in feats])
    assert got.maps.device.type == "cuda"
    assert rel_err(got.maps, want.maps) < 1e-5
    assert rel_err(got.image, want.image) < 1e-5


def test_fused_device_scoring_on_cuda_equals_cpu(trained_run: Path, tmp_path: Path) -> None:
    """The whole engine: a CPU-trained checkpoint evaluated on CUDA gives the CPU's metrics."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    cpu = evaluate(run, device="cpu", progress=False)
    gpu = evaluate(run, device="cuda", progress=False)
    for key, value in cpu["mean"].items():
        assert gpu["mean"][key] == pytest.approx(value, abs=2e-3), key


def test_training_on_cuda_runs_and_reloads_on_cpu(demo_root: Path, tmp_path: Path) -> None:
    """fit on CUDA (device-resident cache, fused Adam), then the checkpoint scores the same on
    the CPU as on CUDA."""
    cfg = tiny_config(demo_root, "device=cuda")
    run = tmp_path / "gpu"
    fit(cfg, run, progress=False)
    on_gpu = evaluate(run, device="cuda", progress=False)
    on_cpu = evaluate(run, device="cpu", progress=False)
    for key, value in on_cpu["mean"].items():
        assert on_gpu["mean"][key] == pytest.approx(value, abs=2e-3), key
    assert 0.0 <= on_cpu["mean"]["p_auroc"] <= 1.0


def test_amp_scoring_on_cuda_close_to_float32() -> None:
    torch.manual_seed(0)
    model = build_model("rlr", SPEC, SMALL_MODELS["rlr"]).eval().to("cuda")
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, c, h, w, generator=g).abs().to("cuda")
             for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)]
    with torch.inference_mode():
        full = score_levels(model, feats, amp=False)
        half = score_levels(model, feats, amp=True)
    assert half.maps.dtype == torch.float32
    assert 0 < rel_err(half.maps, full.maps) < 1e-2


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_on_cuda_equals_eager(demo_root: Path, tmp_path: Path, mode: str) -> None:
    """train.compile (default: fused kernels; reduce-overhead: also replayed as CUDA graphs)
    trains the same weights as eager CUDA training (key biases excepted: true gradient 0)."""
    weights = {}
    for name in ("none", mode):
        fit(tiny_config(demo_root, "device=cuda", f"train.compile={name}"), tmp_path / name,
            progress=False)
        weights[name] = load_file(str(RunDir(tmp_path / name).weights_path()))
    eager, graphed = weights["none"], weights[mode]
    shaping = [k for k in eager if not k.endswith("k_proj.bias")]
    assert max(rel_err(graphed[k], eager[k]) for k in shaping) < 1e-4
