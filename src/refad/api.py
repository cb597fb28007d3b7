"""The Python API: the same capabilities as the CLI.

    from refad import api
    cfg = api.build_config(method="rlr", data="mvtec", root="/data/mvtec",
                           backbone="tf_efficientnet_lite2")
    api.fit(cfg, "runs/rlr")
    result = api.evaluate("runs/rlr")
    report = api.predict("runs/rlr", ["img.png"], "preds/")
    scorer = api.scorer("runs/rlr")           # the Scorer `refad test` and `predict` use
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from refad.atomic import write_text_atomic
from refad.backbones import FeatureCache, FeatureExtractor, build_extractor
from refad.config import RLRConfig, RunConfig, build_config, load_config_file
from refad.deploy.render import heatmap_rgb, normalise_map, overlay
from refad.device import cpu_threads
from refad.inference import Scorer
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps
from refad.reporting.compare import compare
from refad.reporting.evaluation import evaluate
from refad.reporting.predictions import predict
from refad.reporting.report import build_report
from refad.reporting.tables import METRIC_LABELS, decisions_table, markdown_table
from refad.runs import UNIFIED, RunDir, TrainedRun, open_run
from refad.runs.imported import import_run
from refad.training import (
    DeviceFeatures,
    StepSettings,
    compiled_loss,
    extract_features,
    fit,
    make_optimizer,
    train_steps,
)
from refad.training.loop import STORAGE_DTYPES

__all__ = [
    # what users run
    "RunConfig",
    "RunDir",
    "build_config",
    "compare",
    "evaluate",
    "build_report",
    "decisions_table",
    "fit",
    "import_run",
    "load_config_file",
    "open_run",
    "predict",
    "run_demo",
    "scorer",
    # pictures and tables
    "METRIC_LABELS",
    "heatmap_rgb",
    "markdown_table",
    "normalise_map",
    "overlay",
    "write_text_atomic",
    # lower-level pieces for benchmarks and extensions (the same code the commands run)
    "STORAGE_DTYPES",
    "DeviceFeatures",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureSpec",
    "RLRConfig",
    "Scorer",
    "StepSettings",
    "build_extractor",
    "build_model",
    "compiled_loss",
    "cpu_threads",
    "extract_features",
    "gaussian_blur",
    "make_optimizer",
    "max_score",
    "mse_cosine_map",
    "train_steps",
    "upsample_maps",
]


def scorer(
    run: Path | str | TrainedRun,
    unit: str = UNIFIED,
    device: str | torch.device | None = None,
    amp: bool = False,
    compile_mode: str | None = None,
) -> Scorer:
    """The Scorer of one trained unit of a run (backbone included): what `refad test` and
    `refad predict` score with, for code that brings its own images or features."""
    opened = run if isinstance(run, TrainedRun) else open_run(run, device)
    model, _ = opened.model(unit)
    return Scorer(model, opened.device, opened.extractor, amp, compile_mode)


def run_demo(
    out: str | Path,
    epochs: int = 12,
    image_size: int = 128,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Generate synthetic products, train unified RLR on Lite2, evaluate, and draw heatmaps."""
    from refad.data import make_demo_dataset

    out = Path(out)
    tic = time.perf_counter()
    data_root = out / "data"
    if not data_root.exists():
        make_demo_dataset(data_root, size=image_size, seed=0)
    run_dir = out / "run"
    cfg = build_config(
        method="rlr", data="mvtec", root=data_root, backbone="tf_efficientnet_lite2",
        image_size=image_size, epochs=epochs, batch_size=8, device=device,
        overrides=["train.lr=0.0005"],
    )
    resume = RunDir(run_dir).exists()
    fit(cfg, run_dir, resume=resume, progress=progress)
    result = evaluate(run_dir, device=device, progress=progress)
    echo(markdown_table(result))
    test_dirs = sorted(p for p in data_root.glob("*/test/*") if p.name != "good")[:3]
    heat_dir = out / "heatmaps"
    predict(run_dir, test_dirs, heat_dir, device=device)
    echo(f"metrics: {run_dir / 'metrics.md'}")
    echo(f"heatmaps and overlays: {heat_dir}")
    echo(f"demo finished in {time.perf_counter() - tic:.0f} s")
    return result
