"""The body of each report section except the gallery (see `gallery`): summary cards and
facts, configuration, data, metric and decision tables, curves, histograms, training loss.

Each builder takes what `build_report` read and returns the section's inner HTML.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import refad
from refad.atomic import json_safe
from refad.metrics import METRIC_NAMES, image_curves, operating_point
from refad.pipeline.calibration import Calibration
from refad.pipeline.preprocess import size_label
from refad.reporting.report.figures import (
    curves_figure,
    figure_uri,
    histogram_figure,
    loss_figure,
)
from refad.reporting.report.markup import escape, image, is_finite, note, number, table
from refad.reporting.report.views import CategoryView
from refad.reporting.tables import (
    DECISION_LABELS,
    METRIC_LABELS,
    decisions_caption,
    percent,
    ratio,
)
from refad.runs import TrainedRun

CALIBRATION_SOURCES = {
    "validation-normal": "held-out normal training images (never trained on)",
    "dataset-validation": "the dataset's own normal validation images (MVTec AD 2's "
                          "validation/good; never trained on)",
    "train-normal": "the normal training images themselves (optimistic scores: expect more "
                    "false alarms on new images than this suggests)",
}


def summary_section(metrics: dict[str, Any], run: TrainedRun) -> str:
    """What was run and the four numbers most people look for."""
    mean = metrics.get("mean") or {}
    decisions = metrics.get("decisions") or {}
    decided = decisions.get("mean") or {}
    total = len(metrics.get("categories") or {})
    counted = metrics.get("mean_categories") or {}

    def over(metric: str) -> str:  # a mean over fewer categories than the run has says so
        n = counted.get(metric, total)
        return f"; mean over {n} of {total} categories" if n != total else ""

    def decided_over(rate: str) -> str:
        n = sum(1 for d in (decisions.get("categories") or {}).values()
                if is_finite(d.get(rate)))
        return (f"; mean of {n} categories' rates" if n == total
                else f"; mean of {n} of {total} categories' rates")

    cards = [
        ("mean I-AUROC", percent(mean.get("i_auroc")),
         "image ranking, threshold-free" + over("i_auroc")),
        ("mean P-AUROC", percent(mean.get("p_auroc")),
         "pixel ranking, threshold-free" + over("p_auroc")),
        ("false alarms", percent(decided.get("false_alarm_rate")),
         "good images flagged, at the calibrated threshold" + decided_over("false_alarm_rate")),
        ("misses", percent(decided.get("miss_rate")),
         "defective images not flagged, at the calibrated threshold" + decided_over("miss_rate")),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value">{escape(v)}{"" if v == "n/a" else " %"}</div>'
        f'<div class="label">{escape(k)}</div><div class="hint">{escape(h)}</div></div>'
        for k, v, h in cards
    )
    levels = metrics.get("levels")
    facts = [
        ("method", metrics.get("method")),
        ("backbone", metrics.get("backbone")),
        ("levels", ", ".join(str(v) for v in levels) if isinstance(levels, list) else levels),
        ("image size", f"{size_label(metrics.get('image_size'))} px"),
        ("evaluated checkpoint", _checkpoints_text(metrics, run)),
        ("run folder", run.path.resolve().name),
        ("training mode", run.config.train.mode),
        ("refad version", refad.__version__),
    ]
    rows = [(f"<th>{escape(k)}</th>", escape(str(v))) for k, v in facts]
    fact_html = "".join(f"<tr>{k}<td>{v}</td></tr>" for k, v in rows)
    return (f'<div class="cards">{card_html}</div>'
            f'<table class="facts" data-table="facts"><tbody>{fact_html}</tbody></table>')


def _checkpoints_text(metrics: dict[str, Any], run: TrainedRun) -> str:
    """The epoch each unit was evaluated at, against the schedule: a report of a training that
    stopped early must not read as the finished model's."""
    epochs = run.config.train.epochs
    found = metrics.get("checkpoints") or {}
    parts = [f"epoch {c.get('epoch')} of {epochs}" + ("" if len(found) == 1 else f" ({unit})")
             for unit, c in found.items()]
    return "; ".join(parts) or "not recorded (metrics.json of an older refad)"


def config_section(run: TrainedRun) -> str:
    text = json.dumps(json_safe(run.config.model_dump(mode="json")), indent=2)
    return f"<details open><summary>config.json</summary><pre>{escape(text)}</pre></details>"


def _calibration_count(calibration: Calibration, unit: str, category: str) -> str:
    """Normal images that set `category`'s threshold (a per-category unit's own total)."""
    total = calibration.values.stats.get("images") if unit == category else None
    own = calibration.categories.get(category)
    value = total if own is None else own.stats.get("images", total)
    return str(value) if isinstance(value, int) else "n/a"


def _source_text(source: str) -> str:
    if source == "none":
        return "none: the run is not calibrated"
    return CALIBRATION_SOURCES.get(source, source)


def data_section(views: list[CategoryView], run: TrainedRun,
                 calibrations: dict[str, Calibration]) -> str:
    """Test images per category and defect type, and which normal images calibrated."""
    rows = []
    for view in views:
        defects = Counter(r["defect"] for r in view.rows if r["label"] == 1)
        kinds = ", ".join(f"{escape(str(d))} ({n})" for d, n in sorted(defects.items())) or "none"
        good = sum(1 for r in view.rows if r["label"] == 0)
        unit = run.unit_for(view.name)
        rows.append([escape(view.name), str(good), str(len(view.rows) - good), kinds,
                     _calibration_count(calibrations.get(unit), unit, view.name)])
    head = ["category", "good test images", "defective test images", "defect types",
            "calibration images"]
    body = table(head, rows, numeric=(1, 2, 4), name="data")
    sources = sorted({c.images_source or "none" for c in calibrations.values()})
    if sources == ["none"]:
        return body + note("The run is not calibrated: it has no thresholds, so no image is "
                           "decided (an imported checkpoint, or a training stopped before its "
                           "calibration).")
    lines = [f"<li><code>{escape(s)}</code>: {escape(_source_text(s))}</li>" for s in sources]
    return (body + "<p>Thresholds were set on normal images only, never on test images. "
            f"Calibration images:</p><ul>{''.join(lines)}</ul>")


def metrics_section(metrics: dict[str, Any]) -> str:
    per = metrics.get("categories") or {}
    mean = metrics.get("mean") or {}
    head = ["category"] + [METRIC_LABELS[m] for m in METRIC_NAMES]
    rows = [[escape(c)] + [percent(m.get(n)) for n in METRIC_NAMES] for c, m in per.items()]
    total = ["mean"] + [percent(mean.get(n)) for n in METRIC_NAMES]
    caption = "In percent, over all thresholds (nothing here depends on calibration)."
    notes = "".join(f"<li>{escape(n)}</li>" for n in metrics.get("notes") or [])
    return (table(head, rows, total=total, caption=caption, name="metrics")
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def decisions_section(metrics: dict[str, Any]) -> str:
    decisions = metrics.get("decisions") or {}
    per = decisions.get("categories") or {}
    if not per:
        return note("No calibrated threshold in this run: no decisions to show.")
    head = ["category", "threshold", "threshold of", "TP", "FP", "TN", "FN"]
    head += list(DECISION_LABELS.values())
    pixels = any("seg_f1" in d for d in per.values())  # a pixel threshold was calibrated
    head += ["SegF1", "area ratio"] if pixels else []

    def seg(d: dict[str, Any]) -> list[str]:
        return [percent(d.get("seg_f1")), ratio(d.get("area_ratio"))] if pixels else []

    rows = [
        [escape(c), number(d.get("threshold")), escape(str(d.get("threshold_source") or "n/a"))]
        + [str(d.get(k)) for k in ("tp", "fp", "tn", "fn")]
        + [percent(d.get(k)) for k in DECISION_LABELS] + seg(d)
        for c, d in per.items()
    ]
    mean = decisions.get("mean") or {}
    total = (["mean", "", "", "", "", "", ""] + [percent(mean.get(k)) for k in DECISION_LABELS]
             + seg(mean))
    caption = (escape(decisions_caption(metrics)) + " Rates in percent; TP = defective flagged, "
               "FP = good flagged (false alarm), TN = good passed, FN = defective missed.")
    numeric = [1, *range(3, len(head))]
    return (table(head, rows, numeric=numeric, total=total, caption=caption, name="decisions")
            + note(f"Rule: {decisions.get('rule', 'anomalous = score > threshold')}."))


def curves_section(views: list[CategoryView]) -> str:
    parts = []
    for view in views:
        curves = image_curves(view.scores, view.labels)
        body = f"<h3>{escape(view.name)}</h3>"
        if curves is None:
            body += note("Undefined: needs both good and defective test images.")
        else:
            body += image(figure_uri(curves_figure(view, curves)),
                          f"ROC and precision-recall curves of {view.name}")
            if view.threshold is None:
                body += note("No calibrated threshold for this category: none marked.")
            elif math.isnan(operating_point(view.scores, view.labels, view.threshold).precision):
                body += note("Nothing is flagged at the calibrated threshold: precision is "
                             "undefined there, so it is marked on the ROC curve only.")
        parts.append(f'<div class="category" data-category="{escape(view.name)}">{body}</div>')
    return "".join(parts)


def histograms_section(views: list[CategoryView]) -> str:
    parts = []
    for view in views:
        body = f"<h3>{escape(view.name)}</h3>"
        if not view.rows:
            body += note("No test images.")
        else:
            body += image(figure_uri(histogram_figure(view)), f"score histogram of {view.name}")
            if view.threshold is None:
                body += note("No calibrated threshold for this category: none drawn.")
        parts.append(f'<div class="category" data-category="{escape(view.name)}">{body}</div>')
    return "".join(parts)


def loss_section(histories: dict[str, list[dict[str, float]]]) -> str:
    rows = []
    figures = []
    for unit, history in histories.items():
        if not history:
            rows.append([escape(unit), "0", "n/a", "n/a", "n/a"])
            figures.append(f"<h3>{escape(unit)}</h3>" + note("No loss history recorded."))
            continue
        seconds = sum(float(h.get("seconds", 0.0)) for h in history)
        rows.append([escape(unit), str(len(history)), number(history[0]["loss"]),
                     number(history[-1]["loss"]), f"{seconds:.1f}"])
        figures.append(f"<h3>{escape(unit)}</h3>" + image(
            figure_uri(loss_figure(history)), f"training loss of {unit}"))
    head = ["unit", "epochs", "first loss", "last loss", "training s"]
    return table(head, rows, name="loss") + "".join(figures)
