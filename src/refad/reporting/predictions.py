"""Writing predictions: a heatmap, an overlay and a defect mask per image, and
predictions.json / .csv.

Each scored image goes through refad's one result step (`refad.pipeline.postprocess`, as in
the server and the exported models' `Inferencer`); its pictures go to `OUT/<name>_heatmap.png`,
`OUT/<name>_overlay.png` (defect regions outlined) and `OUT/<name>_mask.png`, where
`name` mirrors the image's place under the common parent of the inputs (sub-folders are
created) and is never shared by two files (rule: `refad.inference.batches`). Importing this
module needs no torch: only `predict` (a run folder) loads it. Each row keeps the
absolute `path` and the `relative_path`. A non-finite score or map (a diverged model) gives
`anomalous` None with a `note`, never a decision.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from refad.atomic import write_atomic, write_json, write_text_atomic
from refad.errors import ConfigError, RefadError, require_at_least_one
from refad.inference.batches import ImageResult, PredictionBatch, scored_batches
from refad.pipeline.calibration import Thresholds
from refad.pipeline.postprocess import Prediction, postprocess
from refad.runs.layout import CONFIG_FILE
from refad.runs.lock import LOCK_FILE, folder_lock

if TYPE_CHECKING:
    import torch

PREDICTIONS_JSON = "predictions.json"
NOT_FINITE = "score or anomaly map is not finite (training diverged?); no decision"


@dataclass
class PredictionRow:
    """One image's row of predictions.json / .csv: its `Prediction`, and the files written."""

    path: str
    relative_path: str
    category: str | None  # the category given (None: unknown, decided by the global threshold)
    score: float
    threshold: float | None
    threshold_source: str | None  # "category:<name>", "global" or None (not calibrated)
    normalised_score: float | None
    anomalous: bool | None
    defect_pixels: int | None  # pixels of the defect mask (None: no pixel threshold)
    defect_fraction: float | None  # of the image's pixels
    regions: list[dict[str, Any]]  # connected defect regions: x, y, width, height, area, peak
    heatmap: str
    overlay: str  # heatmap over the image, defect regions outlined
    mask: str | None  # binary defect mask PNG (0 / 255), None without a pixel threshold
    note: str | None = None  # why there is no decision, when that is not plain "no threshold"


@dataclass
class PredictReport:
    predictions: list[PredictionRow]
    failures: list[str]  # one line each: "<file>: <problem>"
    threshold_source: str | None = None  # "global", "category:C"; None: no threshold
    scored_with: str = ""  # what computed the scores ("pytorch ...", "openvino, bf16 export...")
    notes: list[str] = field(default_factory=list)  # e.g. a file given twice, scored once

    def decision_line(self) -> str:
        """What decided the images, for the console (users must not guess)."""
        if self.threshold_source is None:
            return ("no calibrated threshold in this run (imported, or stopped before "
                    "calibration): scores only, no normal/anomalous decision")
        if self.threshold_source == "global":
            return "decided with the run's global threshold (pass --category for a product's own)"
        return f"decided with the threshold of {self.threshold_source.replace(':', ' ')}"


def save_png(path: Path, array: np.ndarray) -> None:
    """Encode in memory, then write atomically (no half-written picture on a failure)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def write_predictions(
    out_dir: Path,
    thresholds: Thresholds,
    batches: Iterable[PredictionBatch],
    category: str | None = None,
    scored_with: str = "",
) -> PredictReport:
    """Render and write every scored image of `batches`, then the summary files.

    `thresholds`: what applies to images of `category` (`Calibration.for_category`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport([], [], thresholds.source, scored_with)
    for batch in batches:
        report.failures.extend(batch.failures)
        report.notes.extend(batch.notes)
        report.predictions.extend(
            _write_result(out_dir, r, postprocess(r.image, r.amap, r.score, thresholds, category))
            for r in batch.results
        )
    _write_summary(out_dir, report, thresholds, category)
    return report


def _write_result(out_dir: Path, r: ImageResult, p: Prediction) -> PredictionRow:
    """The pictures of one image (heatmap, overlay, defect mask), and its row."""
    heat_path = out_dir / f"{r.name}_heatmap.png"
    over_path = out_dir / f"{r.name}_overlay.png"
    mask_path = out_dir / f"{r.name}_mask.png"
    heat_path.parent.mkdir(parents=True, exist_ok=True)
    save_png(heat_path, p.heatmap)
    save_png(over_path, p.overlay)
    if p.mask is not None:
        save_png(mask_path, p.mask.astype(np.uint8) * 255)
    pixels = p.defect_pixels
    return PredictionRow(
        path=str(r.path.absolute()), relative_path=r.relative_path.as_posix(),
        category=p.category, score=p.score, threshold=p.threshold,
        threshold_source=p.threshold_source, normalised_score=p.normalised_score,
        anomalous=p.anomalous, defect_pixels=pixels,
        defect_fraction=None if pixels is None else pixels / p.mask.size,
        regions=[g.as_dict() for g in p.regions],
        heatmap=str(heat_path), overlay=str(over_path),
        mask=str(mask_path) if p.mask is not None else None,
        note=None if p.finite else NOT_FINITE,
    )


def _write_summary(
    out_dir: Path, report: PredictReport, thresholds: Thresholds, category: str | None
) -> None:
    rows = [asdict(p) for p in report.predictions]
    summary = {
        "category": category,
        "threshold": thresholds.threshold,
        "threshold_source": thresholds.source,
        "pixel_threshold": thresholds.pixel_threshold,
        "calibration_images": thresholds.images_source,
        "scored_with": report.scored_with,
        "predictions": rows,
        "failures": report.failures,
    }
    write_json(out_dir / PREDICTIONS_JSON, summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PredictionRow.__dataclass_fields__))
    writer.writeheader()
    writer.writerows({**row, "regions": json.dumps(row["regions"])} for row in rows)
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue())


def refuse_out_among_inputs(inputs: Sequence[Path | str], out_dir: Path | str) -> None:
    """Outputs named like `<stem>_heatmap.png` must never be written into an input's folder,
    nor below a folder given as input: folders are read recursively, so the next predict on
    that folder would score this one's outputs as inputs."""
    target = Path(out_dir).resolve()
    for item in map(Path, inputs):
        folder = item.resolve() if item.is_dir() else item.resolve().parent
        if target == folder:
            raise ConfigError(f"--out: {out_dir} is the input folder {folder}; outputs would "
                              "overwrite or mix with the inputs (choose another folder)")
        if item.is_dir() and folder in target.parents:
            raise ConfigError(f"--out: {out_dir} is inside the input folder {folder}, which is "
                              "read recursively; a later predict on it would score these "
                              "outputs as inputs (choose a folder outside it)")


def refuse_earlier_predictions_among_inputs(inputs: Sequence[Path | str]) -> None:
    """Folders are read recursively: one that holds an earlier prediction (its
    predictions.json beside refad's lock file) would have those heatmaps scored as images."""
    for item in map(Path, inputs):
        if not item.is_dir():
            continue
        # an earlier prediction: its predictions.json beside the lock file, or its lock file
        # above pictures only (a prediction killed before its summary); one walk of the tree
        summaries, locks, pictures = set(), set(), set()
        for path in item.rglob("*"):
            if path.name == PREDICTIONS_JSON:
                summaries.add(path.parent)
            elif path.name == LOCK_FILE:
                locks.add(path.parent)
            elif path.name.endswith("_heatmap.png"):
                pictures.add(path.parent)
        for folder in sorted(locks):
            killed = not (folder / CONFIG_FILE).exists() and any(
                p == folder or folder in p.parents for p in pictures)
            if folder in summaries or killed:
                raise ConfigError(
                    f"{folder}: holds an earlier refad prediction ({LOCK_FILE} and pictures); "
                    f"its pictures would be scored as images (move it out of {item}, or give "
                    "the images by name)"
                )


def refuse_unless_empty(out_dir: Path, inputs: Sequence[Path | str], overwrite: bool) -> list[str]:
    """An earlier prediction's pictures would stay beside new files that no predictions.json
    lists, so a folder holding anything is refused; with `overwrite`, the names to remove are
    returned, but only of a folder refad predict wrote (its lock file, and no run's
    config.json) and holding no input, so a mistyped `--out ~ --overwrite` empties nothing."""
    held = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE) \
        if out_dir.is_dir() else []
    if not held:
        return []
    if not overwrite:
        raise ConfigError(f"--out: {out_dir} is not empty (holds {held[0]!r}"
                          f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}); choose "
                          "an empty folder, or pass --overwrite to replace its contents")
    if not (out_dir / LOCK_FILE).exists() or (out_dir / CONFIG_FILE).exists():
        raise ConfigError(f"--out: {out_dir} was not written by refad predict; --overwrite "
                          "empties only an earlier prediction's folder (choose another folder)")
    target = out_dir.resolve()
    for item in map(Path, inputs):
        if target in item.resolve().parents:
            raise ConfigError(f"--out: {out_dir} holds the input {item}; --overwrite would "
                              "delete it (choose another folder)")
    return held


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        raise RefadError(f"{path}: cannot remove for --overwrite ({exc.strerror or exc})") \
            from None


@contextlib.contextmanager
def output_folder(
    inputs: Sequence[Path | str], out_dir: Path | str, batch_size: int, overwrite: bool
) -> Iterator[Path]:
    """What both predict paths check before any work, then `out_dir` held for writing: created
    (removed again if this fails having written nothing), locked against a second writer,
    and empty."""
    require_at_least_one("batch_size", batch_size)
    refuse_out_among_inputs(inputs, out_dir)
    refuse_earlier_predictions_among_inputs(inputs)
    out_dir = Path(out_dir)
    refuse_unless_empty(out_dir, inputs, overwrite)  # before the lock leaves its file there
    with folder_lock(out_dir, "give another --out"):
        for name in refuse_unless_empty(out_dir, inputs, overwrite):  # again: no one writes now
            _remove(out_dir / name)
        try:
            yield out_dir
        except BaseException:
            # a Ctrl-C, a full disk, an unreadable input: pictures without the predictions.json
            # that lists them would be taken for an earlier prediction, or scored as products;
            # the folder was empty when this began, so what it holds now is this run's
            for entry in out_dir.iterdir():
                if entry.name != LOCK_FILE:
                    with contextlib.suppress(RefadError):
                        _remove(entry)
            raise


def predict(
    run_dir: Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    device: str | torch.device | None = None,
    category: str | None = None,
    batch_size: int = 8,
    amp: bool = False,
    compile_mode: str | None = None,
    overwrite: bool = False,
) -> PredictReport:
    """`refad predict`: open a run folder, score the images and write the results into an
    empty `out_dir` (`overwrite`: one holding an earlier prediction is emptied first)."""
    from refad.inference.predict import predict_images  # torch: only for run folders
    from refad.inference.scorer import describe_scoring
    from refad.runs import open_run

    with output_folder(inputs, out_dir, batch_size, overwrite) as out:
        run = open_run(run_dir, device)
        thresholds, batches = predict_images(
            run, inputs, category, batch_size, amp, compile_mode
        )
        return write_predictions(out, thresholds, batches, category,
                                 describe_scoring(run.device, amp))


def predict_exported(
    model_dir: Path | str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    category: str | None = None,
    batch_size: int = 8,
    runtime: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> PredictReport:
    """`refad predict --model`: score with an exported folder (`refad.deploy.Inferencer`)
    and write the same files as `predict` does for a run folder."""
    from refad.deploy import Inferencer

    with output_folder(inputs, out_dir, batch_size, overwrite) as out:
        inferencer = Inferencer(model_dir, runtime=runtime, device=device)
        thresholds = inferencer.thresholds(category)

        def score(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
            # the export's input rule (tiles where it records tiling), as Inferencer.predict
            return inferencer.score_images(images, category, batch_size)

        return write_predictions(
            out, thresholds, scored_batches(inputs, batch_size, score), category,
            inferencer.scored_with(category),
        )
