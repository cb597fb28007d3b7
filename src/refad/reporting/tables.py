"""Metric tables in Markdown: per category and mean, in percent."""

from __future__ import annotations

import math
from typing import Any

from refad.metrics import METRIC_NAMES

METRIC_LABELS = {
    "i_auroc": "I-AUROC",
    "i_ap": "I-AP",
    "i_f1max": "I-F1max",
    "p_auroc": "P-AUROC",
    "p_ap": "P-AP",
    "p_f1max": "P-F1max",
    "au_pro": "AU-PRO@0.3",
}


def percent(x: float | None) -> str:
    """A fraction as a percentage with one decimal; n/a for missing or undefined values."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per-category rows and the mean, in percent; then the notes on undefined metrics (a mean
    over fewer categories than the table shows must say so)."""
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


def metrics_markdown(result: dict[str, Any]) -> str:
    """The `metrics.md` of a run: a title naming what produced the figures, then the table."""
    title = (
        f"# {result['method']} - backbone {result['backbone']}, levels {result['levels']}, "
        f"{result['image_size']} px, last epoch\n\n"
    )
    return title + markdown_table(result) + "\n"
