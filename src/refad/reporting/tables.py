"""Metric tables in Markdown: per category and mean, in percent."""

from __future__ import annotations

import math
from typing import Any

from refad.errors import ConfigError
from refad.metrics import METRIC_NAMES
from refad.pipeline.preprocess import size_label

METRIC_LABELS = {
    "i_auroc": "I-AUROC",
    "i_ap": "I-AP",
    "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC",
    "p_ap": "P-AP",
    "p_f1max": "P-F1max",
    "au_pro": "AU-PRO@0.3",
}


def _check_result(result: Any, caller: str, metrics: bool) -> None:
    """These functions are public (`refad.api`): a dict that is not an evaluation result is one
    line naming what is wrong, not a KeyError or TypeError from inside the table."""
    def fail(problem: str) -> None:
        raise ConfigError(f"{caller}: result: {problem} (pass the dict that evaluate() "
                          "returns, or a run's metrics.json)")

    if not isinstance(result, dict):
        fail(f"a {type(result).__name__}, not a dict")
    decisions = result.get("decisions")
    if decisions is not None:  # evaluate()'s own dict holds NaN for undefined rates: no schema
        per = decisions.get("categories") if isinstance(decisions, dict) else None
        if not isinstance(per, dict):
            fail("decisions.categories missing or not a mapping")
        for name, row in per.items():
            bad = [k for k in ("tp", "fp", "tn", "fn") if not isinstance(row, dict)
                   or not isinstance(row.get(k), int) or isinstance(row.get(k), bool)]
            if bad:
                fail(f"decisions.categories.{name}: {', '.join(bad)} missing or not a count")
    if not metrics:
        return
    for key in ("categories", "mean"):
        if not isinstance(result.get(key), dict):
            fail(f"{key!r} missing or not a mapping")
    for name, row in [*result["categories"].items(), ("mean", result["mean"])]:
        absent = [m for m in METRIC_NAMES if not isinstance(row, dict) or m not in row]
        if absent:
            fail(f"{name!r} lacks {', '.join(absent)}")


def percent(x: float | None) -> str:
    """A fraction as a percentage with one decimal; n/a for missing or undefined values."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per-category rows and the mean, in percent; then the notes on undefined metrics (a mean
    over fewer categories than the table shows must say so)."""
    _check_result(result, "markdown_table", metrics=True)
    head = "| category | " + " | ".join(METRIC_LABELS[m] for m in METRIC_NAMES) + " |"
    sep = "|---|" + "---:|" * len(METRIC_NAMES)
    rows = [head, sep]
    for cat, m in result["categories"].items():
        rows.append(f"| {cat} | " + " | ".join(percent(m[n]) for n in METRIC_NAMES) + " |")
    mean = " | ".join(percent(result["mean"][n]) for n in METRIC_NAMES)
    rows.append(f"| **mean** | {mean} |")
    notes = result.get("notes") or []
    if notes:
        rows.append("")
        rows.extend(f"- {note}" for note in notes)
    return "\n".join(rows)


DECISION_LABELS = {
    "false_alarm_rate": "false alarms", "miss_rate": "misses", "precision": "precision",
    "recall": "recall", "f1": "F1",
}


def decisions_table(result: dict[str, Any]) -> str:
    """Decisions at each category's calibrated threshold (percent), with the counts; empty
    when the run has no calibrated threshold."""
    _check_result(result, "decisions_table", metrics=False)
    decisions = result.get("decisions") or {}
    per = decisions.get("categories") or {}
    if not per:
        return ""
    pixels = any("seg_f1" in d for d in per.values())  # runs with a pixel threshold
    extra = " | SegF1 | area ratio" if pixels else ""
    head = ("| category | threshold | " + " | ".join(DECISION_LABELS.values())
            + f" | flagged good / good | missed / defective{extra} |")
    rows = [head, "|---|---:|" + "---:|" * (len(DECISION_LABELS) + 2 + 2 * pixels)]
    for cat, d in per.items():
        rates = " | ".join(percent(d.get(k)) for k in DECISION_LABELS)
        threshold = "n/a" if d.get("threshold") is None else f"{d['threshold']:.4g}"
        seg = f" | {segmentation_cells(d)}" if pixels else ""
        rows.append(f"| {cat} | {threshold} | {rates} | {d['fp']} / {d['fp'] + d['tn']}"
                    f" | {d['fn']} / {d['fn'] + d['tp']}{seg} |")
    mean = decisions.get("mean") or {}
    rates = " | ".join(percent(mean.get(k)) for k in DECISION_LABELS)
    seg = f" | {segmentation_cells(mean)}" if pixels else ""
    rows.append(f"| **mean** | | {rates} | | {seg} |")
    return "\n".join(rows)


def ratio(x: float | None) -> str:
    """A plain ratio with two decimals (the area ratio: 1.00 is the true size); n/a if none."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def segmentation_cells(row: dict[str, Any]) -> str:
    """SegF1 (percent) and the predicted-to-true area ratio of a decision row."""
    return f"{percent(row.get('seg_f1'))} | {ratio(row.get('area_ratio'))}"


def decisions_caption(result: dict[str, Any]) -> str:
    """What the decision table is: which threshold, set on which normal images."""
    decisions = result.get("decisions") or {}
    images = ", ".join(decisions.get("calibration_images") or []) or "none"
    own = ("each category's own; the global one where a category has none of its own"
           if any(d.get("threshold_source") == "global"
                  for d in (decisions.get("categories") or {}).values())
           else "each category's own")
    text = (f"At the calibrated threshold ({own}; anomalous = score > threshold), "
            f"set on normal images only (calibration images: {images}); never on test images.")
    if any("seg_f1" in d for d in (decisions.get("categories") or {}).values()):
        text += (" SegF1: pixel F1 of the defect masks (drawn at the calibrated level, by the "
                 "run's mask rule) over all test pixels of the category; area ratio: predicted / "
                 "true defect pixels, mean over defective images (1 = the right size).")
    return text


def metrics_markdown(result: dict[str, Any]) -> str:
    """The `metrics.md` of a run: a title naming what produced the figures, the threshold-free
    metrics table, then the decisions at the calibrated thresholds."""
    title = (
        f"# {result['method']} - backbone {result['backbone']}, levels {result['levels']}, "
        f"{size_label(result['image_size'])} px, last epoch\n\n"
    )
    text = title + "## Threshold-free metrics\n\n" + markdown_table(result) + "\n"
    table = decisions_table(result)
    if table:
        text += "\n## Decisions at the calibrated threshold\n\n" + decisions_caption(result)
        text += "\n\n" + table + "\n"
    if result.get("samples"):
        text += "\n## Per sample (all views of a part)\n\n" + samples_table(result) + "\n"
    return text


SAMPLE_LABELS = {"i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max",
                 "false_alarm_rate": "false alarms", "miss_rate": "misses", "f1": "F1"}


def samples_table(result: dict[str, Any]) -> str:
    """Per-sample results of a multi-view dataset (Real-IAD), in percent, with its rule;
    empty when the result has none."""
    samples = result.get("samples") or {}
    per = samples.get("categories") or {}
    if not per:
        return ""
    rows = ["| category | samples | defective | " + " | ".join(SAMPLE_LABELS.values()) + " |",
            "|---|---:|---:|" + "---:|" * len(SAMPLE_LABELS)]
    for cat, m in per.items():
        cells = " | ".join(percent(m.get(k)) for k in SAMPLE_LABELS)
        rows.append(f"| {cat} | {m['samples']} | {m['defective']} | {cells} |")
    mean = samples.get("mean") or {}
    rows.append("| **mean** | | | " + " | ".join(percent(mean.get(k)) for k in SAMPLE_LABELS)
                + " |")
    return "\n".join(rows) + f"\n\nRule: {samples.get('rule', '')}."
