"""The Python API: the same capabilities as the CLI.

    from refad import api
    cfg = api.build_config(method="rlr", data="mvtec", root="/data/mvtec",
                           backbone="tf_efficientnet_lite2")
    api.fit(cfg, "runs/rlr")
    result = api.evaluate("runs/rlr")
    report = api.predict("runs/rlr", ["img.png"], "preds/")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from refad.config import RunConfig, apply_overrides
from refad.engine.evaluate import evaluate, markdown_table
from refad.engine.predict import predict
from refad.engine.train import fit
from refad.presets import preset

__all__ = ["build_config", "evaluate", "fit", "predict", "run_demo", "markdown_table"]


def build_config(
    method: str = "rlr",
    data: str = "mvtec",
    root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    normal_dir: str | Path | None = None,
    anomalous_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    test_normal_dir: str | Path | None = None,
    backbone: str | None = None,
    levels: Sequence[int] | None = None,
    weights: str | Path | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    per_category: bool = False,
    feature_cache: str | Path | None = None,
    val_fraction: float | None = None,
    device: str = "auto",
    overrides: Sequence[str] | None = None,
) -> RunConfig:
    """A method's preset with the given fields overridden (None keeps the preset's value)."""
    cfg = preset(method)
    sets: list[str] = [f"data.kind={data}", f"device={device}"]

    def put(key: str, value: object) -> None:
        if value is not None:
            import json

            sets.append(f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}")

    for key, value in {
        "data.root": root, "data.categories": list(categories) if categories else None,
        "data.normal_dir": normal_dir, "data.anomalous_dir": anomalous_dir,
        "data.mask_dir": mask_dir, "data.test_normal_dir": test_normal_dir,
        "data.image_size": image_size, "backbone.name": backbone,
        "backbone.levels": list(levels) if levels else None,
        "backbone.weights": str(weights) if weights is not None else None,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
        "train.seed": seed, "train.feature_cache": feature_cache,
        "train.val_fraction": val_fraction,
        "train.mode": "per-category" if per_category else None,
    }.items():
        put(key, value)
    return apply_overrides(cfg, sets + list(overrides or []))


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
    resume = (run_dir / "config.json").exists()
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
