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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from refad.atomic import ensure_dir, write_text_atomic
from refad.backbones import FeatureCache, FeatureExtractor, build_extractor
from refad.config import RunConfig
from refad.config import build_config as _build_config
from refad.config import load_config_file as _load_config_file
from refad.config.arguments import checked_arguments
from refad.data import make_demo_dataset
from refad.device import cpu_threads
from refad.errors import ConfigError
from refad.inference import Scorer
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.models.rlr.config import RLRConfig
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps
from refad.pipeline.render import heatmap_rgb, normalise_map, overlay
from refad.reporting.compare import compare as _compare
from refad.reporting.evaluation import evaluate as _evaluate
from refad.reporting.predictions import predict as _predict
from refad.reporting.report import build_report as _build_report
from refad.reporting.tables import (
    METRIC_LABELS,
    decisions_caption,
    decisions_table,
    markdown_table,
)
from refad.runs import UNIFIED, RunDir, TrainedRun
from refad.runs import open_run as _open_run
from refad.runs.imported import import_run as _import_run
from refad.training import (
    DeviceFeatures,
    StepSettings,
    compiled_loss,
    extract_features,
    make_optimizer,
    train_steps,
)
from refad.training import fit as _fit
from refad.training.loop import STORAGE_DTYPES

# What users call is checked against its type hints first: a wrong argument is one line
# (`predict: inputs: ...`), not a traceback from deep inside (refad.config.arguments).
build_config = checked_arguments(_build_config)
compare = checked_arguments(_compare)
evaluate = checked_arguments(_evaluate)
build_report = checked_arguments(_build_report)
fit = checked_arguments(_fit)
import_run = checked_arguments(_import_run)
load_config_file = checked_arguments(_load_config_file)
open_run = checked_arguments(_open_run)
predict = checked_arguments(_predict)

__all__ = [
    # what users run
    "RunConfig",
    "RunDir",
    "build_config",
    "compare",
    "evaluate",
    "build_report",
    "decisions_caption",
    "decisions_table",
    "fit",
    "import_run",
    "load_config_file",
    "open_run",
    "predict",
    "run_demo",
    "DemoSettings",
    "demo_config",
    "demo_settings",
    "make_demo_dataset",
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


@checked_arguments
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


@dataclass(frozen=True)
class DemoSettings:
    """What `refad demo` generates and trains: small realistic defects on three products,
    unified RLR on Lite2, each product's thresholds from its normal training images
    (benchmarks/calibration.md, benchmarks/demo.md: every variant tried)."""

    image_size: int = 192
    epochs: int = 40
    batch_size: int = 8
    lr: float = 5e-4
    # level 3 alone: level 2's maps follow the screw's thread pitch, which its stride cannot
    # resolve, so normal screws score like defective ones there (benchmarks/demo_levels.md)
    levels: tuple[int, ...] = (3,)
    # a two-layer RLR at half the paper's width for level 3 (benchmarks/demo.md)
    num_layers: int = 2
    hidden_dims: tuple[int, ...] = (256,)
    calibration_images: str = "training"  # or "held_out": val_fraction of them, not trained on
    # training images score a little lower than new normal ones (the model has seen them);
    # the normal-tail estimate of the 0.999 quantile leaves that margin (benchmarks/demo.md)
    threshold_quantile: float = 0.999
    val_fraction: float = 0.25  # used when calibration_images is "held_out"
    n_train: int = 32  # normal images per product
    n_test_good: int = 16
    n_test_defect: int = 16

    @property
    def dataset(self) -> dict[str, int]:
        return {"n_train": self.n_train, "n_test_good": self.n_test_good,
                "n_test_defect": self.n_test_defect, "size": self.image_size, "seed": 0}


def demo_settings(**changes: Any) -> DemoSettings:
    return replace(DemoSettings(), **changes)


def demo_config(
    data_root: str | Path,
    settings: DemoSettings,
    device: str = "auto",
    calibration_images: str | None = None,
) -> RunConfig:
    """The demo's run configuration; `calibration_images` overrides the settings' choice."""
    calibration_images = calibration_images or settings.calibration_images
    held = calibration_images == "held_out"
    return build_config(
        method="rlr", data="mvtec", root=data_root, backbone="tf_efficientnet_lite2",
        image_size=settings.image_size, epochs=settings.epochs, batch_size=settings.batch_size,
        device=device, levels=list(settings.levels),
        val_fraction=settings.val_fraction if held else 0.0,
        overrides=[f"train.lr={settings.lr}", f"train.calibration_images={calibration_images}",
                   f"train.threshold_quantile={settings.threshold_quantile}",
                   f"model.num_layers={settings.num_layers}",
                   f"model.hidden_dims={list(settings.hidden_dims)}"],
    )


def _check_demo_rerun(run_dir: Path, config: RunConfig, changes: dict[str, int],
                      echo: Callable[[str], None]) -> None:
    """A rerun continues the saved demo run with its own settings: a flag that asks for
    others is refused (it was ignored, and the figures looked like the asked-for schedule's),
    and a run of other than the default settings is named."""
    saved = RunDir(run_dir).resume()
    have = {"epochs": saved.train.epochs, "image_size": saved.data.image_size}
    want = {"epochs": config.train.epochs, "image_size": config.data.image_size}
    differ = [key for key in changes if have[key] != want[key]]
    if differ:
        flags = ", ".join(f"--{key.replace('_', '-')} {want[key]}" for key in differ)
        raise ConfigError(
            f"--out: {run_dir} holds a demo run of {have['epochs']} epochs at "
            f"{have['image_size']} px, which a rerun continues; {flags} would be ignored "
            "(choose another --out)")
    if have != want:
        echo(f"continuing the demo run in {run_dir} with its saved settings: "
             f"{have['epochs']} epochs at {have['image_size']} px")


@checked_arguments
def run_demo(
    out: str | Path,
    epochs: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Generate synthetic products, train unified RLR on Lite2, evaluate, decide per product,
    draw heatmaps and defect masks, and write the report."""
    out = ensure_dir(out)  # a file or an unwritable place is refused before any work
    tic = time.perf_counter()
    changes = {k: v for k, v in (("epochs", epochs), ("image_size", image_size))
               if v is not None}
    settings = demo_settings(**changes)
    data_root = out / "data"
    if not data_root.exists():
        make_demo_dataset(data_root, **settings.dataset)
    run_dir = out / "run"
    resume = RunDir(run_dir).exists()
    config = demo_config(data_root, settings, device)
    if resume:
        _check_demo_rerun(run_dir, config, changes, echo)
    fit(config, run_dir, resume=resume, progress=progress)
    result = evaluate(run_dir, device=device, progress=progress)
    echo(markdown_table(result))
    echo("\nDecisions at each product's calibrated threshold (set on its normal images only):")
    for category, d in result["decisions"]["categories"].items():
        echo(f"  {category}: {d['tp']} of {d['tp'] + d['fn']} defective images flagged, "
             f"{d['fp']} of {d['fp'] + d['tn']} good images flagged (false alarms)")
    heat_dir = out / "heatmaps"
    for category in result["categories"]:
        defects = sorted(p for p in (data_root / category / "test").iterdir()
                         if p.name != "good")
        predict(run_dir, defects, heat_dir / category, device=device, category=category,
                overwrite=True)  # the demo's own folder: a rerun replaces its pictures
    echo(f"metrics: {run_dir / 'metrics.md'}")
    echo(f"heatmaps, overlays and defect masks: {heat_dir}")
    echo(f"report: {build_report(run_dir, device)}")
    echo(f"demo finished in {time.perf_counter() - tic:.0f} s")
    return result
