"""The gallery section: which test images to show per category (worst misses, worst false
alarms, clearest detections), scoring just those again for their maps, and their markup.

Only these few images are scored again; one gone from disk or unreadable becomes a failure
line in its entry, never a failed report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refad.errors import DataError, RefadError
from refad.inference.batches import ImageResult
from refad.inference.predict import predict_images
from refad.pipeline.calibration import Thresholds
from refad.pipeline.decision import is_anomalous
from refad.reporting.report.markup import escape, image, note, number
from refad.reporting.report.tiles import Tile, entry_tiles, has_colour_range
from refad.reporting.report.views import CategoryView
from refad.runs import UNIFIED, TrainedRun


@dataclass(frozen=True)
class GalleryKind:
    """One row of a category's gallery: a heading, what it shows, and its test rows."""

    title: str
    hint: str
    rows: list[dict[str, Any]]


def gallery_kinds(view: CategoryView, size: int) -> list[GalleryKind]:
    """Worst misses, worst false alarms and clearest detections at the threshold; without
    one, simply the highest-scored defective and good images."""
    bad = [r for r in view.rows if r["label"] == 1]
    good = [r for r in view.rows if r["label"] == 0]
    high = sorted(bad, key=lambda r: -r["score"])
    t = view.threshold
    if t is None:
        return [
            GalleryKind("Highest-scored defective images", "no threshold to decide", high[:size]),
            GalleryKind("Highest-scored good images", "no threshold to decide",
                        sorted(good, key=lambda r: -r["score"])[:size]),
        ]
    flagged = {id(r) for r in view.rows if is_anomalous(r["score"], t)}
    return [
        GalleryKind("Worst misses", "defective, not flagged (score <= threshold), lowest first",
                    sorted((r for r in bad if id(r) not in flagged),
                           key=lambda r: r["score"])[:size]),
        GalleryKind("Worst false alarms", "good, flagged (score > threshold), highest first",
                    sorted((r for r in good if id(r) in flagged),
                           key=lambda r: -r["score"])[:size]),
        GalleryKind("Correct detections", "defective, flagged, highest first",
                    [r for r in high if id(r) in flagged][:size]),
    ]


@dataclass
class Rescored:
    """Maps of a few images, scored again; each image has a result or a failure line."""

    calibration: Thresholds
    results: dict[str, ImageResult]
    failures: dict[str, str]


def _decided_as(run: TrainedRun, category: str) -> str | None:
    """The category to score as: a unified run's category without a calibration of its own is
    decided at the global threshold, as `refad test` decided it (asking for it by name is
    refused, as `refad predict --category` refuses it)."""
    if run.config.train.mode != "unified":
        return category
    known = run.model(UNIFIED)[1].unit_calibration(UNIFIED).known_categories
    return None if known and category not in known else category


def rescore(
    run: TrainedRun,
    category: str,
    paths: Sequence[str],
    amp: bool = False,
    compile_mode: str | None = None,
) -> Rescored:
    """Score `paths` again for their maps. A file gone since `refad test` or unreadable
    becomes a failure line: the rest of the report does not depend on it."""
    found = Rescored(Thresholds(), {}, {})
    present = []
    for path in dict.fromkeys(str(Path(p)) for p in paths):
        if Path(path).is_file():
            present.append(path)
        else:
            found.failures[path] = f"{path}: file not found (moved or deleted after refad test?)"
    if not present:
        return found
    try:
        found.calibration, batches = predict_images(
            run, present, category=_decided_as(run, category), batch_size=8, amp=amp,
            compile_mode=compile_mode)
    except RefadError as exc:  # a category the run has no model for: the rest of the report
        found.failures.update((path, f"{path}: not scored again ({exc})") for path in present)
        return found
    lines: list[str] = []
    try:
        for batch in batches:
            found.results.update((str(r.path), r) for r in batch.results)
            lines += batch.failures
    except DataError as exc:  # e.g. removed between the check above and the read
        lines.append(str(exc))
    for path in present:
        if path not in found.results:
            mine = [line for line in lines if line.startswith(path)]
            found.failures[path] = mine[0] if mine else f"{path}: could not be scored again"
    return found


def _caption(row: dict[str, Any], threshold: float | None) -> str:
    name = "/".join(Path(row["image"]).parts[-2:])
    digits = 4
    while (threshold is not None and digits < 17
           and number(row["score"], digits) == number(threshold, digits)
           and row["score"] != threshold):
        digits += 2  # 'score 14.49 above threshold 14.49' reads as a contradiction
    score = f"score {number(row['score'], digits)}"
    if threshold is not None:
        side = "above" if is_anomalous(row["score"], threshold) else "at or below"
        score += f" {side} threshold {number(threshold, digits)}"
    return (f'<figcaption><b title="{escape(row["image"])}">{escape(name)}</b>'
            f"<span>defect: {escape(str(row['defect']))}</span>"
            f"<span>{escape(score)}</span></figcaption>")


def _tile_html(tile: Tile) -> str:
    picture = image(tile.uri, tile.label, "pic") if tile.uri else (
        f'<div class="blank">{escape(tile.text)}</div>')
    return f'<div class="tile">{picture}<span>{escape(tile.label)}</span></div>'


def gallery_entry(row: dict[str, Any], found: Rescored, threshold: float | None) -> str:
    key = str(Path(row["image"]))
    result = found.results.get(key)
    if result is None:
        line = found.failures.get(key, f"{key}: not scored")
        return f'<div class="entry failed"><p class="failure">{escape(line)}</p></div>'
    tiles = "".join(_tile_html(t) for t in entry_tiles(row, result, found.calibration))
    warn = "" if result.finite else note("Map or score not finite: no decision.")
    return (f'<figure class="entry"><div class="tiles">{tiles}</div>'
            f"{_caption(row, threshold)}{warn}</figure>")


def gallery_section(
    run: TrainedRun,
    views: list[CategoryView],
    size: int,
    amp: bool = False,
    compile_mode: str | None = None,
) -> str:
    legend = note("Each entry: the image; the heatmap over it with the predicted defect "
                  "outlined (white); the ground-truth defect outlined (green); the predicted "
                  "defect mask. Heatmap colours use the run's calibrated range (floor to "
                  "ceiling of normal images' maps), where it has one.")
    parts = [legend]
    for index, view in enumerate(views):
        kinds = gallery_kinds(view, size)
        paths = [r["image"] for k in kinds for r in k.rows]
        found = (rescore(run, view.name, paths, amp, compile_mode) if paths
                 else Rescored(Thresholds(), {}, {}))
        body = f"<h3>{escape(view.name)}</h3>"
        if view.threshold is None:
            body += note("No calibrated threshold for this category: no misses or false "
                         "alarms can be named.")
        if found.results and not has_colour_range(found.calibration):
            body += note("No calibrated colour range: each heatmap is scaled to its own "
                         "image's range, so a good image can look as red as a defective one.")
        for kind in kinds:
            body += f'<h4>{escape(kind.title)} <small>{escape(kind.hint)}</small></h4>'
            entries = "".join(gallery_entry(r, found, view.threshold) for r in kind.rows)
            body += (f'<div class="entries">{entries}</div>' if entries
                     else '<p class="none">none</p>')
        parts.append(f'<div class="category" id="gallery-{index}" '
                     f'data-category="{escape(view.name)}">{body}</div>')
    return "".join(parts)
