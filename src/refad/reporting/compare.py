"""Train and evaluate several methods on one dataset; write one side-by-side table.

Each method starts from its own preset (backbone, levels, input size, schedule); what the
caller passes in `base` (the dataset, and any shared override such as a smaller backbone) is
applied to every method alike, `method_overrides` to one method only. Every run folder is a
normal refad run (`OUT/<method>/`), so each can be re-evaluated or used for prediction alone.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from refad.atomic import write_json, write_text_atomic
from refad.config import PRESETS, RunConfig, apply_overrides, build_config, preset
from refad.config import shared_train_fields as shared_fields
from refad.config.overrides import differing_fields
from refad.data import load_split
from refad.errors import ConfigError
from refad.metrics import METRIC_NAMES
from refad.pipeline.preprocess import size_label
from refad.reporting.evaluation import evaluate
from refad.reporting.tables import METRIC_LABELS, percent
from refad.runs import RunDir
from refad.runs.layout import COMPARISON_JSON, COMPARISON_MD
from refad.training import fit


def method_run_config(
    method: str,
    base: Mapping[str, Any] | RunConfig | None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The RunConfig of one method in a comparison.

    `base` as a mapping: keyword arguments of `refad.api.build_config` (without `method`),
    applied on top of the method's preset. `base` as a RunConfig: its data section, device and
    the method-independent training fields (mode, feature cache, validation split, ...) replace
    the preset's; everything method-specific stays the preset's. `overrides` come last.
    """
    if method not in PRESETS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(PRESETS))}")
    if isinstance(base, RunConfig):
        cfg = preset(method)
        train = cfg.train.model_copy(
            update={f: getattr(base.train, f) for f in shared_fields()}
        )
        cfg = cfg.model_copy(update={"data": base.data, "device": base.device, "train": train})
        cfg = apply_overrides(cfg, list(overrides))
    else:
        kwargs = dict(base or {})
        if "method" in kwargs:
            raise ConfigError("compare: give the methods as a list, not base['method']")
        extra = list(kwargs.pop("overrides", None) or [])
        unknown = sorted(set(kwargs) - set(inspect.signature(build_config).parameters))
        if unknown:
            raise ConfigError(f"compare: base: {unknown[0]!r} is not an argument of "
                              "build_config (the fields base may hold)")
        cfg = build_config(method=method, overrides=extra + list(overrides), **kwargs)
    return cfg


def comparison_markdown(result: dict[str, Any]) -> str:
    """Mean metrics per method (one row each), then per-category I-AUROC / P-AUROC."""
    methods = result["methods"]
    lines = [
        f"# Comparison on {result['dataset']} - last-epoch models, metrics in percent",
        "",
        "| method | backbone | levels | size | epochs | train s | "
        + " | ".join(METRIC_LABELS[m] for m in METRIC_NAMES)
        + " |",
        "|---|---|---|---:|---:|---:|" + "---:|" * len(METRIC_NAMES),
    ]
    for name, r in methods.items():
        cells = [
            name, r["backbone"], ",".join(str(v) for v in r["levels"]), size_label(r["image_size"]),
            str(r["epochs"]), f"{r['train_seconds']:.0f}",
        ]
        cells += [percent(r["mean"][m]) for m in METRIC_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    categories = sorted({c for r in methods.values() for c in r["categories"]})
    lines += [
        "",
        "Per category, I-AUROC / P-AUROC:",
        "",
        "| category | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for cat in categories:
        cells = []
        for r in methods.values():
            m = r["categories"].get(cat)
            pair = None if m is None else f"{percent(m['i_auroc'])} / {percent(m['p_auroc'])}"
            cells.append(pair or "n/a")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_resumed_config(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """A resumed method continues its saved run, which its new settings would not reach: the
    table had shown them beside that run's figures. Any difference is refused up front."""
    folder = RunDir(run_dir)
    if not (resume and folder.exists()):
        return
    changed = differing_fields(folder.read_config(), cfg, ignore=("device",))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3
                                           else "")
        raise ConfigError(
            f"{run_dir}: resume continues this run with its saved config.json, whose {shown} "
            "differ from the settings asked for now; drop those settings, or compare into "
            "another output folder")


def compare(
    methods: Sequence[str],
    base: Mapping[str, Any] | RunConfig | None,
    out_dir: Path | str,
    method_overrides: Mapping[str, Sequence[str]] | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    metrics_mode: str = "exact",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Train + evaluate each method into `out_dir/<method>`; write comparison.{md,json}.

    Every configuration is built and validated before the first run starts. With `resume`,
    a method whose run folder exists continues (or, if complete, is only re-evaluated).
    Returns the content of comparison.json.
    """
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ConfigError("compare: no methods given")
    per_method = dict(method_overrides or {})
    unknown = sorted(set(per_method) - set(methods))
    if unknown:
        raise ConfigError(f"compare: overrides for {unknown[0]!r}, which is not compared")
    configs = {
        m: method_run_config(m, base, list(overrides) + list(per_method.get(m, ())))
        for m in methods
    }
    out_dir = Path(out_dir)
    if not resume:
        taken = [m for m in methods if RunDir(out_dir / m).exists()]
        if taken:
            raise ConfigError(
                f"{out_dir / taken[0]}: already holds a run; use resume or another output folder"
            )
    for name, cfg in configs.items():
        _check_resumed_config(out_dir / name, cfg, resume)
    data = next(iter(configs.values())).data
    load_split(data, "train")  # a wrong data section fails now, not after the first run
    dataset = f"{data.kind} ({data.normal_dir if data.kind == 'folder' else data.root})"
    rows: dict[str, Any] = {}
    for name, cfg in configs.items():
        run_dir = out_dir / name
        tic = time.perf_counter()
        fit(cfg, run_dir, resume=resume and RunDir(run_dir).exists(), progress=progress)
        train_seconds = time.perf_counter() - tic
        metrics = evaluate(
            run_dir, batch_size=batch_size, metrics_mode=metrics_mode, progress=progress
        )
        rows[name] = {
            "method": cfg.method,
            "run_dir": str(run_dir),
            "backbone": cfg.backbone.name,
            "levels": list(cfg.backbone.levels),
            "image_size": cfg.data.image_size,
            "epochs": cfg.train.epochs,
            "train_seconds": train_seconds,
            "eval_seconds": metrics["seconds"],
            "mean": metrics["mean"],
            "categories": metrics["categories"],
        }
    result = {"dataset": dataset, "metrics_mode": metrics_mode, "methods": rows}
    write_json(out_dir / COMPARISON_JSON, result)
    write_text_atomic(out_dir / COMPARISON_MD, comparison_markdown(result))
    return result
