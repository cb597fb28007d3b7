"""The report's charts (ROC and precision-recall curves, score histograms, training loss) as
matplotlib figures, and a figure as a PNG data URI for embedding in the page."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from refad.metrics import Curves, operating_point
from refad.reporting.report.views import CategoryView

GOOD_COLOUR, DEFECT_COLOUR, THRESHOLD_COLOUR = "#2f6db5", "#d1495b", "#222222"


def figure_uri(fig: Figure) -> str:
    """A matplotlib figure as a PNG data URI, through Agg directly (no pyplot, no global
    backend switch: the report runs inside other programs)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def histogram_figure(view: CategoryView) -> Figure:
    """Good and defective test scores on shared bins, the threshold as a labelled line."""
    scores, labels = view.scores, view.labels
    marks = [view.threshold] if view.threshold is not None else []
    low, high = float(min([scores.min(), *marks])), float(max([scores.max(), *marks]))
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


def loss_figure(history: list[dict[str, float]]) -> Figure:
    """Mean training loss per epoch of one unit."""
    fig = Figure(figsize=(9.6, 3.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", color=GOOD_COLOUR, lw=2, ms=4)
    ax.set(xlabel="epoch", ylabel="training loss (mean per epoch)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(epochs) == 1:  # one point: the locator's integer steps would still read 0.96...1.04
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    return fig
