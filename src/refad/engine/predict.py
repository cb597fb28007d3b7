"""Prediction on new images: score, heatmap, overlay and (if calibrated) a decision per image.

A folder with some unreadable files is still processed: every good image gets its result and
the bad ones are listed with the reason, so no work is lost; the caller exits non-zero.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refad.data import image_tensor, read_image_rgb
from refad.engine.inference import score_images
from refad.engine.io import write_atomic, write_text_atomic
from refad.engine.render import heatmap_rgb, normalise_map, overlay, resize_map
from refad.engine.run import TrainedRun, open_run
from refad.engine.units import UNIFIED
from refad.errors import ConfigError, DataError, RefadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


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


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files given directly, plus image files (by suffix) found recursively in folders."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{item}: folder holds no images")
            found.extend(files)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return found


def _save_png(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems, seen = [], {}
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return stems


def predict_run(
    run: TrainedRun,
    inputs: Sequence[Path],
    out_dir: Path,
    category: str | None = None,
    batch_size: int = 8,
    amp: bool = False,
) -> PredictReport:
    """Score images with a loaded run and write heatmaps, overlays and a summary.

    `amp`: bf16 reconstruction on CUDA (maps stay float32); ignored on the CPU.
    """
    unit = UNIFIED if run.config.train.mode == "unified" else category
    if unit is None:
        raise ConfigError(f"{run.path}: per-category run; name the --category to use "
                          f"({', '.join(run.units)})")
    model, meta = run.model(unit)
    calib = meta.calibration or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = collect_images(inputs)
    stems = _unique_stems(paths)
    size = run.config.data.image_size
    report = PredictReport([], [])
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for path, stem in zip(paths[start : start + batch_size], stems[start : start + batch_size],
                              strict=True):
            try:
                images.append(read_image_rgb(path))
                kept.append((path, stem))
            except RefadError as exc:
                report.failures.append(str(exc))
        if not images:
            continue
        batch = torch.stack([image_tensor(im, size, run.extractor.mean, run.extractor.std)
                             for im in images]).to(run.device)
        scores = score_images(run.extractor, model, batch, amp)
        maps = scores.maps.float().cpu().numpy()
        for (path, stem), image, amap, score in zip(kept, images, maps,
                                                    scores.image.float().cpu().tolist(),
                                                    strict=True):
            h, w = image.shape[:2]
            unit_map = normalise_map(resize_map(amap, w, h), calib.get("map_floor", amap.min()),
                                     calib.get("map_ceiling", amap.max()))
            heat = heatmap_rgb(unit_map)
            heat_path, over_path = out_dir / f"{stem}_heatmap.png", out_dir / f"{stem}_overlay.png"
            _save_png(heat_path, heat)
            _save_png(over_path, overlay(image, heat))
            threshold = calib.get("threshold")
            report.predictions.append(Prediction(
                path=str(path), score=float(score),
                normalised_score=float(score / threshold) if threshold else None,
                anomalous=bool(score > threshold) if threshold is not None else None,
                heatmap=str(heat_path), overlay=str(over_path),
            ))
    _write_summary(out_dir, report, calib)
    return report


def _write_summary(out_dir: Path, report: PredictReport, calib: dict) -> None:
    rows = [asdict(p) for p in report.predictions]
    summary = {"threshold": calib.get("threshold"), "threshold_source": calib.get("source"),
               "predictions": rows, "failures": report.failures}
    write_text_atomic(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(Prediction.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue())


def predict(
    run_dir: Path,
    inputs: Sequence[Path],
    out_dir: Path,
    device: str | torch.device | None = None,
    category: str | None = None,
    batch_size: int = 8,
    amp: bool = False,
) -> PredictReport:
    """Open a run folder and predict (see `predict_run`)."""
    return predict_run(open_run(run_dir, device), inputs, out_dir, category, batch_size, amp)
