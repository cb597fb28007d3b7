"""Writing predictions: a heatmap and an overlay per image, and predictions.json / .csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from refad.atomic import write_atomic, write_text_atomic
from refad.inference.predict import PredictionBatch, predict_images
from refad.reporting.render import heatmap_rgb, normalise_map, overlay, resize_map
from refad.runs import open_run, write_json


@dataclass
class Prediction:
    path: str
    score: float
    normalised_score: float | None
    anomalous: bool | None
    heatmap: str
    overlay: str


@dataclass
class PredictReport:
    predictions: list[Prediction]
    failures: list[str]  # one line each: "<file>: <problem>"


def save_png(path: Path, array: np.ndarray) -> None:
    """Encode in memory, then write atomically (no half-written picture on a failure)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def write_predictions(
    out_dir: Path, calibration: dict[str, Any], batches: Iterable[PredictionBatch]
) -> PredictReport:
    """Render and write every scored image of `batches`, then the summary files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport([], [])
    seen: dict[str, int] = {}
    threshold = calibration.get("threshold")
    for batch in batches:
        report.failures.extend(batch.failures)
        for r in batch.results:
            n = seen.get(r.path.stem, 0)
            seen[r.path.stem] = n + 1
            stem = r.path.stem if n == 0 else f"{r.path.stem}_{n}"
            h, w = r.image.shape[:2]
            unit_map = normalise_map(
                resize_map(r.amap, w, h),
                calibration.get("map_floor", r.amap.min()),
                calibration.get("map_ceiling", r.amap.max()),
            )
            heat = heatmap_rgb(unit_map)
            heat_path, over_path = out_dir / f"{stem}_heatmap.png", out_dir / f"{stem}_overlay.png"
            save_png(heat_path, heat)
            save_png(over_path, overlay(r.image, heat))
            report.predictions.append(Prediction(
                path=str(r.path), score=r.score,
                normalised_score=float(r.score / threshold) if threshold else None,
                anomalous=bool(r.score > threshold) if threshold is not None else None,
                heatmap=str(heat_path), overlay=str(over_path),
            ))
    _write_summary(out_dir, report, calibration)
    return report


def _write_summary(out_dir: Path, report: PredictReport, calib: dict) -> None:
    rows = [asdict(p) for p in report.predictions]
    summary = {"threshold": calib.get("threshold"), "threshold_source": calib.get("source"),
               "predictions": rows, "failures": report.failures}
    write_json(out_dir / "predictions.json", summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(Prediction.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue())


def predict(
    run_dir: Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    device: str | torch.device | None = None,
    category: str | None = None,
    batch_size: int = 8,
    amp: bool = False,
    compile_mode: str | None = None,
) -> PredictReport:
    """`refad predict`: open a run folder, score the images and write the results."""
    run = open_run(run_dir, device)
    calibration, batches = predict_images(run, inputs, category, batch_size, amp, compile_mode)
    return write_predictions(Path(out_dir), calibration, batches)
