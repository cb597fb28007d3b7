"""`report.html`: one self-contained page per run folder, for whoever has to judge the run
without rerunning it: what was trained, how well it ranks and decides, where it fails (with
pictures of the failures) and how training went.

Built from what `refad test` wrote (`metrics.json`, `test_scores.json`) and from the
checkpoints (loss history, calibration); only the few gallery images are scored again, for
their anomaly maps. Every picture is a PNG data URI and the CSS is inline: the file opens
offline, can be mailed or archived, and never fetches anything.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

import refad
from refad.atomic import json_safe, write_text_atomic
from refad.data.images import read_mask
from refad.deploy.defects import defect_mask, pixel_threshold
from refad.deploy.render import heatmap_rgb, normalise_map, outline, overlay, resize_map
from refad.errors import DataError
from refad.inference.batches import ImageResult
from refad.inference.predict import predict_images
from refad.metrics import METRIC_NAMES
from refad.reporting.tables import DECISION_LABELS, METRIC_LABELS, decisions_caption, percent
from refad.runs import RunDir, TrainedRun, open_run

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("config", "Configuration"),
    ("data", "Data"),
    ("metrics", "Threshold-free metrics"),
    ("decisions", "Decisions at the calibrated threshold"),
    ("curves", "ROC and precision-recall curves"),
    ("histograms", "Score histograms"),
    ("gallery", "Gallery"),
    ("loss", "Training loss"),
)
"""(id, heading) of the report's sections, in page order."""

PICTURE_MAX = 256
"""Longest side (pixels) of an embedded gallery picture: keeps the page small."""

GOOD_COLOUR, DEFECT_COLOUR, THRESHOLD_COLOUR = "#2f6db5", "#d1495b", "#222222"
TRUTH_RGB = (40, 220, 70)  # ground-truth outline: distinct from the overlay's white outline

CALIBRATION_SOURCES = {
    "validation-normal": "held-out normal training images (never trained on)",
    "train-normal": "the normal training images themselves (optimistic scores: expect more "
                    "false alarms on new images than this suggests)",
}

_e = html.escape


# ---------------------------------------------------------------- curves (pure numpy)


@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall points of image scores, one per distinct score."""

    fpr: np.ndarray
    tpr: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    auroc: float
    ap: float


def image_curves(scores: Sequence[float], labels: Sequence[int]) -> Curves | None:
    """The curves for `anomalous = score >= s` over every distinct score `s`: images with
    equal scores enter together (one point per group, as sklearn), so ties never draw a
    staircase that no threshold can reach. None without both good and defective images.

    AUROC is the trapezoid area (ties count one half); AP is sklearn's step sum
    sum_k (R_k - R_{k-1}) P_k, so both match `metrics.json`.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]
    recall, precision = tp / n_pos, tp / (tp + fp)
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return Curves(fpr, tpr, np.r_[0.0, recall], np.r_[1.0, precision], auroc, ap)


@dataclass(frozen=True)
class OperatingPoint:
    """Where `anomalous = score > threshold` sits on the curves."""

    fpr: float
    tpr: float
    precision: float  # NaN when nothing is flagged


def operating_point(
    scores: Sequence[float], labels: Sequence[int], threshold: float
) -> OperatingPoint:
    """The calibrated threshold's point (same rule as the decision table: score > threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    flagged = s > threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return OperatingPoint(
        fp / n_neg if n_neg else math.nan,
        tp / n_pos if n_pos else math.nan,
        tp / (tp + fp) if tp + fp else math.nan,
    )


# ---------------------------------------------------------------- pictures


def png_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) or (H, W) uint8 array as a PNG data URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_uri(fig: Figure) -> str:
    """A matplotlib figure as a PNG data URI, through Agg directly (no pyplot, no global
    backend switch: the report runs inside other programs)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_size(width: int, height: int, limit: int = PICTURE_MAX) -> tuple[int, int]:
    """(width, height) scaled down so that the longer side is at most `limit`."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at display size; a pixel stays set when a quarter of its area is set, so
    thin defects do not vanish when the picture is made smaller."""
    if mask.shape[::-1] == size:
        return mask
    grey = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(grey) > 63


@dataclass(frozen=True)
class Tile:
    """One labelled picture of a gallery entry; `uri` None shows `text` instead."""

    label: str
    uri: str | None
    text: str = ""


def entry_tiles(row: dict[str, Any], result: ImageResult, calibration: dict[str, Any],
                ) -> list[Tile]:
    """Image, heatmap overlay (predicted defect outlined), ground truth outlined, predicted
    mask; all at display size, the map resized straight to it (never to full size first)."""
    height, width = result.image.shape[:2]
    size = display_size(width, height)
    image = result.image
    if size != (width, height):
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    amap = resize_map(result.amap, *size)
    floor, ceiling = calibration.get("map_floor"), calibration.get("map_ceiling")
    if not (_finite(floor) and _finite(ceiling)):
        floor, ceiling = float(np.nanmin(amap)), float(np.nanmax(amap))
    heat = heatmap_rgb(normalise_map(amap, floor, ceiling))
    predicted = defect_mask(amap, pixel_threshold(calibration))
    tiles = [
        Tile("image", png_uri(image)),
        Tile("overlay", png_uri(overlay(image, heat, mask=predicted))),
        _truth_tile(row, image, (height, width), size),
    ]
    if predicted is None:
        tiles.append(Tile("predicted mask", None, "no pixel threshold (run not calibrated)"))
    else:
        label = "predicted mask" if predicted.any() else "predicted mask (empty)"
        tiles.append(Tile(label, png_uri(predicted.astype(np.uint8) * 255)))
    return tiles


def _truth_tile(row: dict[str, Any], image: np.ndarray, full_hw: tuple[int, int],
                size: tuple[int, int]) -> Tile:
    if not row.get("mask"):
        text = "good image: no defect" if row["label"] == 0 else "no mask for this image"
        return Tile("ground truth", None, text)
    try:
        truth = read_mask(Path(row["mask"]), full_hw, image=Path(row["image"]))
    except DataError as exc:
        return Tile("ground truth", None, str(exc))
    return Tile("ground truth", png_uri(outline(image, _shrink_mask(truth, size), TRUTH_RGB)))


# ---------------------------------------------------------------- html pieces


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 4) -> str:
    """A score or threshold with `digits` significant digits; n/a when missing."""
    return f"{value:.{digits}g}" if _finite(value) else "n/a"


def table(head: Sequence[str], rows: Iterable[Sequence[str]],
          numeric: Iterable[int] | None = None, total: Sequence[str] | None = None,
          caption: str = "", name: str = "") -> str:
    """A table of already-escaped cells under plain-text `head`; the `numeric` columns
    (default: all but the first) are right aligned; `total` is a last, emphasised row."""
    right = set(range(1, len(head))) if numeric is None else set(numeric)

    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(
            f"<{tag} class=\"num\">{v}</{tag}>" if i in right else f"<{tag}>{v}</{tag}>"
            for i, v in enumerate(values)
        )

    body = [f"<tr>{cells(r, 'td')}</tr>" for r in rows]
    if total is not None:
        body.append(f'<tr class="total">{cells(total, "td")}</tr>')
    cap = f"<caption>{caption}</caption>" if caption else ""
    data = f' data-table="{_e(name)}"' if name else ""
    return (f"<table{data}>{cap}<thead><tr>{cells([_e(h) for h in head], 'th')}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _image(uri: str, alt: str, cls: str = "figure") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# ---------------------------------------------------------------- the run's facts


@dataclass(frozen=True)
class CategoryView:
    """The test rows of one category and its calibrated image threshold (None: none)."""

    name: str
    rows: list[dict[str, Any]]
    threshold: float | None

    @property
    def scores(self) -> np.ndarray:
        return np.array([r["score"] for r in self.rows], dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.rows], dtype=np.int64)


def category_views(metrics: dict[str, Any], rows: list[dict[str, Any]]) -> list[CategoryView]:
    """Categories in metrics.json's order (then any only the rows name)."""
    names = list(metrics.get("categories") or {})
    names += sorted({r["category"] for r in rows} - set(names))
    decided = (metrics.get("decisions") or {}).get("categories") or {}
    views = []
    for name in names:
        threshold = (decided.get(name) or {}).get("threshold")
        views.append(CategoryView(name, [r for r in rows if r["category"] == name],
                                  float(threshold) if _finite(threshold) else None))
    return views


# ---------------------------------------------------------------- sections


def summary_section(metrics: dict[str, Any], run: TrainedRun) -> str:
    """What was run and the four numbers most people look for."""
    mean = metrics.get("mean") or {}
    decided = (metrics.get("decisions") or {}).get("mean") or {}
    cards = [
        ("mean I-AUROC", percent(mean.get("i_auroc")), "image ranking, threshold-free"),
        ("mean P-AUROC", percent(mean.get("p_auroc")), "pixel ranking, threshold-free"),
        ("false alarms", percent(decided.get("false_alarm_rate")),
         "good images flagged, at the calibrated threshold"),
        ("misses", percent(decided.get("miss_rate")),
         "defective images not flagged, at the calibrated threshold"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value">{_e(v)}{"" if v == "n/a" else " %"}</div>'
        f'<div class="label">{_e(k)}</div><div class="hint">{_e(h)}</div></div>'
        for k, v, h in cards
    )
    levels = metrics.get("levels")
    facts = [
        ("method", metrics.get("method")),
        ("backbone", metrics.get("backbone")),
        ("levels", ", ".join(str(v) for v in levels) if isinstance(levels, list) else levels),
        ("image size", f"{metrics.get('image_size')} px"),
        ("run folder", run.path.resolve().name),
        ("training mode", run.config.train.mode),
        ("refad version", refad.__version__),
    ]
    rows = [(f"<th>{_e(k)}</th>", _e(str(v))) for k, v in facts]
    fact_html = "".join(f"<tr>{k}<td>{v}</td></tr>" for k, v in rows)
    return (f'<div class="cards">{card_html}</div>'
            f'<table class="facts" data-table="facts"><tbody>{fact_html}</tbody></table>')


def config_section(run: TrainedRun) -> str:
    text = json.dumps(json_safe(run.config.model_dump(mode="json")), indent=2)
    return f"<details open><summary>config.json</summary><pre>{_e(text)}</pre></details>"


def _calibration_count(calibration: dict[str, Any] | None, unit: str, category: str) -> str:
    """Normal images that set `category`'s threshold (a per-category unit's own total)."""
    calibration = calibration or {}
    own = (calibration.get("categories") or {}).get(category) or {}
    value = own.get("images", calibration.get("images") if unit == category else None)
    return str(value) if isinstance(value, int) else "n/a"


def _source_text(source: str) -> str:
    if source == "none":
        return "none: the run is not calibrated"
    return CALIBRATION_SOURCES.get(source, source)


def data_section(views: list[CategoryView], run: TrainedRun,
                 calibrations: dict[str, dict[str, Any] | None]) -> str:
    """Test images per category and defect type, and which normal images calibrated."""
    rows = []
    for view in views:
        defects = Counter(r["defect"] for r in view.rows if r["label"] == 1)
        kinds = ", ".join(f"{_e(str(d))} ({n})" for d, n in sorted(defects.items())) or "none"
        good = sum(1 for r in view.rows if r["label"] == 0)
        unit = run.unit_for(view.name)
        rows.append([_e(view.name), str(good), str(len(view.rows) - good), kinds,
                     _calibration_count(calibrations.get(unit), unit, view.name)])
    head = ["category", "good test images", "defective test images", "defect types",
            "calibration images"]
    body = table(head, rows, numeric=(1, 2, 4), name="data")
    sources = sorted({(c or {}).get("source") or "none" for c in calibrations.values()})
    lines = [f"<li><code>{_e(s)}</code>: {_e(_source_text(s))}</li>" for s in sources]
    return (body + "<p>Thresholds were set on normal images only, never on test images. "
            f"Calibration images:</p><ul>{''.join(lines)}</ul>")


def metrics_section(metrics: dict[str, Any]) -> str:
    per = metrics.get("categories") or {}
    mean = metrics.get("mean") or {}
    head = ["category"] + [METRIC_LABELS[m] for m in METRIC_NAMES]
    rows = [[_e(c)] + [percent(m.get(n)) for n in METRIC_NAMES] for c, m in per.items()]
    total = ["mean"] + [percent(mean.get(n)) for n in METRIC_NAMES]
    caption = "In percent, over all thresholds (nothing here depends on calibration)."
    notes = "".join(f"<li>{_e(n)}</li>" for n in metrics.get("notes") or [])
    return (table(head, rows, total=total, caption=caption, name="metrics")
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def decisions_section(metrics: dict[str, Any]) -> str:
    decisions = metrics.get("decisions") or {}
    per = decisions.get("categories") or {}
    if not per:
        return _note("No calibrated threshold in this run: no decisions to show.")
    head = ["category", "threshold", "threshold of", "TP", "FP", "TN", "FN"]
    head += list(DECISION_LABELS.values())
    rows = [
        [_e(c), number(d.get("threshold")), _e(str(d.get("threshold_source") or "n/a"))]
        + [str(d.get(k)) for k in ("tp", "fp", "tn", "fn")]
        + [percent(d.get(k)) for k in DECISION_LABELS]
        for c, d in per.items()
    ]
    mean = decisions.get("mean") or {}
    total = ["mean", "", "", "", "", "", ""] + [percent(mean.get(k)) for k in DECISION_LABELS]
    caption = (_e(decisions_caption(metrics)) + " Rates in percent; TP = defective flagged, "
               "FP = good flagged (false alarm), TN = good passed, FN = defective missed.")
    numeric = [1, *range(3, len(head))]
    return (table(head, rows, numeric=numeric, total=total, caption=caption, name="decisions")
            + _note(f"Rule: {decisions.get('rule', 'anomalous = score > threshold')}."))


def curves_figure(view: CategoryView, curves: Curves) -> Figure:
    """ROC and precision-recall panels, the calibrated threshold marked on both."""
    fig = Figure(figsize=(9.6, 3.9), dpi=100, layout="constrained")
    roc, pr = fig.subplots(1, 2)
    roc.plot([0, 1], [0, 1], ls=":", color="#999999", lw=1)
    roc.plot(curves.fpr, curves.tpr, color=DEFECT_COLOUR, lw=2)
    roc.set(xlabel="false positive rate", ylabel="true positive rate",
            title=f"ROC - AUROC {100 * curves.auroc:.1f} %")
    pr.plot(curves.recall, curves.precision, color=GOOD_COLOUR, lw=2, drawstyle="steps-pre")
    pr.set(xlabel="recall", ylabel="precision",
           title=f"Precision-recall - AP {100 * curves.ap:.1f} %")
    if view.threshold is not None:
        point = operating_point(view.scores, view.labels, view.threshold)
        label = f"threshold {view.threshold:.4g}"
        roc.plot([point.fpr], [point.tpr], "o", color=THRESHOLD_COLOUR, ms=8, label=label)
        if math.isfinite(point.precision):
            pr.plot([point.tpr], [point.precision], "o", color=THRESHOLD_COLOUR, ms=8, label=label)
        for ax in (roc, pr):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right" if ax is roc else "lower left", frameon=False)
    for ax in (roc, pr):
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.05))
        ax.grid(alpha=0.3)
    return fig


def curves_section(views: list[CategoryView]) -> str:
    parts = []
    for view in views:
        curves = image_curves(view.scores, view.labels)
        body = f"<h3>{_e(view.name)}</h3>"
        if curves is None:
            body += _note("Undefined: needs both good and defective test images.")
        else:
            body += _image(figure_uri(curves_figure(view, curves)),
                           f"ROC and precision-recall curves of {view.name}")
            if view.threshold is None:
                body += _note("No calibrated threshold for this category: none marked.")
            elif math.isnan(operating_point(view.scores, view.labels, view.threshold).precision):
                body += _note("Nothing is flagged at the calibrated threshold: precision is "
                              "undefined there, so it is marked on the ROC curve only.")
        parts.append(f'<div class="category" data-category="{_e(view.name)}">{body}</div>')
    return "".join(parts)


def histogram_figure(view: CategoryView) -> Figure:
    """Good and defective test scores on shared bins, the threshold as a labelled line."""
    scores, labels = view.scores, view.labels
    marks = [view.threshold] if view.threshold is not None else []
    low, high = float(min(scores.min(), *marks)), float(max(scores.max(), *marks))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, int(np.clip(scores.size // 2, 8, 40)) + 1)
    fig = Figure(figsize=(9.6, 3.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    groups = [(scores[labels == v], c, n) for v, c, n in
              ((0, GOOD_COLOUR, "good"), (1, DEFECT_COLOUR, "defective"))]
    ax.hist([g for g, _, _ in groups], bins=bins, color=[c for _, c, _ in groups],
            label=[f"{n} ({g.size})" for g, _, n in groups], edgecolor="white", linewidth=0.5)
    if view.threshold is not None:
        ax.axvline(view.threshold, color=THRESHOLD_COLOUR, ls="--", lw=1.5,
                   label=f"threshold {view.threshold:.4g}")
    ax.set(xlabel="image score", ylabel="test images")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return fig


def histograms_section(views: list[CategoryView]) -> str:
    parts = []
    for view in views:
        body = f"<h3>{_e(view.name)}</h3>"
        if not view.rows:
            body += _note("No test images.")
        else:
            body += _image(figure_uri(histogram_figure(view)), f"score histogram of {view.name}")
            if view.threshold is None:
                body += _note("No calibrated threshold for this category: none drawn.")
        parts.append(f'<div class="category" data-category="{_e(view.name)}">{body}</div>')
    return "".join(parts)


# ---------------------------------------------------------------- gallery


@dataclass(frozen=True)
class GalleryKind:
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
    return [
        GalleryKind("Worst misses", "defective, not flagged (score <= threshold), lowest first",
                    sorted((r for r in bad if r["score"] <= t), key=lambda r: r["score"])[:size]),
        GalleryKind("Worst false alarms", "good, flagged (score > threshold), highest first",
                    sorted((r for r in good if r["score"] > t), key=lambda r: -r["score"])[:size]),
        GalleryKind("Correct detections", "defective, flagged, highest first",
                    [r for r in high if r["score"] > t][:size]),
    ]


@dataclass
class Rescored:
    """Maps of a few images, scored again; each image has a result or a failure line."""

    calibration: dict[str, Any]
    results: dict[str, ImageResult]
    failures: dict[str, str]


def rescore(run: TrainedRun, category: str, paths: Sequence[str]) -> Rescored:
    """Score `paths` again for their maps. A file gone since `refad test` or unreadable
    becomes a failure line: the rest of the report does not depend on it."""
    found = Rescored({}, {}, {})
    present = []
    for path in dict.fromkeys(str(Path(p)) for p in paths):
        if Path(path).is_file():
            present.append(path)
        else:
            found.failures[path] = f"{path}: file not found (moved or deleted after refad test?)"
    if not present:
        return found
    found.calibration, batches = predict_images(run, present, category=category, batch_size=8)
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
    score = f"score {number(row['score'])}"
    if threshold is not None:
        side = "above" if row["score"] > threshold else "at or below"
        score += f" {side} threshold {number(threshold)}"
    return (f'<figcaption><b title="{_e(row["image"])}">{_e(name)}</b>'
            f"<span>defect: {_e(str(row['defect']))}</span><span>{_e(score)}</span></figcaption>")


def _tile_html(tile: Tile) -> str:
    picture = _image(tile.uri, tile.label, "pic") if tile.uri else (
        f'<div class="blank">{_e(tile.text)}</div>')
    return f'<div class="tile">{picture}<span>{_e(tile.label)}</span></div>'


def gallery_entry(row: dict[str, Any], found: Rescored, threshold: float | None) -> str:
    key = str(Path(row["image"]))
    result = found.results.get(key)
    if result is None:
        line = found.failures.get(key, f"{key}: not scored")
        return f'<div class="entry failed"><p class="failure">{_e(line)}</p></div>'
    tiles = "".join(_tile_html(t) for t in entry_tiles(row, result, found.calibration))
    warn = "" if result.finite else _note("Map or score not finite: no decision.")
    return (f'<figure class="entry"><div class="tiles">{tiles}</div>'
            f"{_caption(row, threshold)}{warn}</figure>")


def gallery_section(run: TrainedRun, views: list[CategoryView], size: int) -> str:
    legend = _note("Each entry: the image; the heatmap over it with the predicted defect "
                   "outlined (white); the ground-truth defect outlined (green); the predicted "
                   "defect mask. Heatmap colours use the run's calibrated range.")
    if size == 0:
        return _note("Gallery left out (gallery_size 0).")
    parts = [legend]
    for index, view in enumerate(views):
        kinds = gallery_kinds(view, size)
        paths = [r["image"] for k in kinds for r in k.rows]
        found = rescore(run, view.name, paths) if paths else Rescored({}, {}, {})
        body = f"<h3>{_e(view.name)}</h3>"
        if view.threshold is None:
            body += _note("No calibrated threshold for this category: no misses or false "
                          "alarms can be named.")
        for kind in kinds:
            body += f'<h4>{_e(kind.title)} <small>{_e(kind.hint)}</small></h4>'
            entries = "".join(gallery_entry(r, found, view.threshold) for r in kind.rows)
            body += (f'<div class="entries">{entries}</div>' if entries
                     else '<p class="none">none</p>')
        parts.append(f'<div class="category" id="gallery-{index}" '
                     f'data-category="{_e(view.name)}">{body}</div>')
    return "".join(parts)


# ---------------------------------------------------------------- loss


def loss_figure(history: list[dict[str, float]]) -> Figure:
    fig = Figure(figsize=(9.6, 3.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", color=GOOD_COLOUR, lw=2, ms=4)
    ax.set(xlabel="epoch", ylabel="training loss (mean per epoch)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return fig


def loss_section(histories: dict[str, list[dict[str, float]]]) -> str:
    rows = []
    figures = []
    for unit, history in histories.items():
        if not history:
            rows.append([_e(unit), "0", "n/a", "n/a", "n/a"])
            figures.append(f"<h3>{_e(unit)}</h3>" + _note("No loss history recorded."))
            continue
        seconds = sum(float(h.get("seconds", 0.0)) for h in history)
        rows.append([_e(unit), str(len(history)), number(history[0]["loss"]),
                     number(history[-1]["loss"]), f"{seconds:.1f}"])
        figures.append(f"<h3>{_e(unit)}</h3>" + _image(
            figure_uri(loss_figure(history)), f"training loss of {unit}"))
    head = ["unit", "epochs", "first loss", "last loss", "training s"]
    return table(head, rows, name="loss") + "".join(figures)


# ---------------------------------------------------------------- page

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dfe3ea; --soft: #f5f7fa;
  --accent: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 16px; padding-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
h4 { font-size: 14px; margin: 14px 0 6px; }
h4 small { color: var(--muted); font-weight: normal; margin-left: 6px; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 16px; display: inline-block; }
nav.toc ol { margin: 4px 0; padding-left: 20px; columns: 3; column-gap: 40px; }
a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 6px;
  max-width: 1100px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); white-space: nowrap; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
table.facts th { color: var(--muted); font-weight: normal; width: 160px; }
.cards { display: flex; gap: 12px; margin: 8px 0 16px; flex-wrap: wrap; }
.card { flex: 1 1 200px; border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; background: var(--soft); }
.card .value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-weight: 600; }
.card .hint, .note, .none { color: var(--muted); font-size: 13px; }
ul.notes { color: var(--muted); font-size: 13px; }
details pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 14px; font-size: 12.5px; line-height: 1.4; max-height: 480px; overflow: auto; }
summary { cursor: pointer; color: var(--muted); }
img.figure { display: block; max-width: 100%; height: auto; }
.category { margin-bottom: 12px; }
.entries { display: flex; flex-wrap: wrap; gap: 14px; }
.entry { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  background: #fff; }
.tiles { display: flex; gap: 6px; }
.tile { width: 128px; font-size: 12px; color: var(--muted); text-align: center; }
.tile img.pic, .tile .blank { display: block; width: 128px; height: 128px;
  object-fit: contain; background: var(--soft); border-radius: 3px; }
.tile .blank { display: flex; align-items: center; justify-content: center; padding: 6px;
  font-size: 11px; overflow: hidden; word-break: break-word; }
figcaption { font-size: 12.5px; margin-top: 6px; display: flex; gap: 12px; flex-wrap: wrap; }
.failure { color: #a1262f; font-size: 13px; margin: 0; }
.entry.failed { padding: 10px 12px; border-color: #e8b4b9; background: #fdf3f4;
  max-width: 1100px; }
"""


def page(metrics: dict[str, Any], run: TrainedRun, bodies: dict[str, str]) -> str:
    """The whole document: header, table of contents, the sections in `SECTIONS` order."""
    name = run.path.resolve().name
    toc = "".join(f'<li><a href="#{sid}">{_e(title)}</a></li>' for sid, title in SECTIONS)
    sections = "\n".join(section(sid, title, bodies[sid]) for sid, title in SECTIONS)
    subtitle = (f"{metrics.get('method')} · backbone {metrics.get('backbone')} · "
                f"{metrics.get('image_size')} px · refad {refad.__version__}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>refad report - {_e(name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>Run report: {_e(name)}</h1><p>{_e(subtitle)}</p></header>\n"
        f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>\n'
        f"{sections}\n</main>\n</body>\n</html>\n"
    )


def build_report(run_dir: Path | str, device: str | None = None, gallery_size: int = 3) -> Path:
    """Write `report.html` into a run folder that `refad test` has evaluated; return its path.

    Raises CheckpointError (one line, naming `refad test`) when the evaluation files are
    missing. `device` scores the gallery images (default: the run's configured device);
    `gallery_size` images of each kind per category are shown.
    """
    folder = RunDir(Path(run_dir))
    metrics, rows = folder.read_evaluation()  # first: cheap, and says what to run when missing
    run = open_run(folder.path, device)
    metas = {unit: run.model(unit)[1] for unit in run.units}
    views = category_views(metrics, rows)
    bodies = {
        "summary": summary_section(metrics, run),
        "config": config_section(run),
        "data": data_section(views, run, {u: m.calibration for u, m in metas.items()}),
        "metrics": metrics_section(metrics),
        "decisions": decisions_section(metrics),
        "curves": curves_section(views),
        "histograms": histograms_section(views),
        "gallery": gallery_section(run, views, max(0, int(gallery_size))),
        "loss": loss_section({u: list(m.history) for u, m in metas.items()}),
    }
    path = folder.report_path
    write_text_atomic(path, page(metrics, run, bodies))
    return path
