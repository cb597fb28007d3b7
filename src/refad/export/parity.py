"""The self-check of an export: the written graph against the PyTorch model, same input.

Figures: the largest map difference relative to the map's range over the check images, the
largest relative image-score difference, and the decisions that flip at each known threshold.
fp32 must meet the issue's bar (1e-4 of the map range, 1e-5 on scores, no flip); fp16, bf16 and
int8 only have to stay near (their real test is the benchmark's metrics), but the figures are always
recorded in the metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from refad.atomic import json_safe
from refad.pipeline.decision import exceeds

TIE_REL = 1e-6  # relative distance to a threshold below which a decision is a tie, not a flip
TOLERANCES: dict[str, dict[str, Any]] = {
    "fp32": {"map_rel": 1e-4, "map_mean_rel": 1e-5, "score_rel": 1e-5, "flips": 0},
    "fp16": {"map_rel": 3e-2, "map_mean_rel": 1e-2, "score_rel": 3e-2, "flips": None},
    "bf16": {"map_rel": 1e-1, "map_mean_rel": 1e-2, "score_rel": 3e-2, "flips": None},
    "int8": {"map_rel": None, "map_mean_rel": 0.1, "score_rel": 0.5, "flips": None},
}
"""int8 moves single pixels by a large part of the range while the map as a whole stays put, so
its gate is the mean difference; the max is still recorded."""


def compare(
    ref_maps: np.ndarray,
    ref_scores: np.ndarray,
    maps: np.ndarray,
    scores: np.ndarray,
    thresholds: Iterable[float],
    span: float | None = None,
) -> dict[str, Any]:
    """Difference figures of one graph run against the reference (all float64 for the maths).
    `span`: the map range to measure against (default: that of `ref_maps`); a run on a part
    of the check images passes the range of all of them, since one image's map can be flat
    (a 32-px image: one value to 1e-6), which would make float rounding look like a failure."""
    ref_maps, maps = ref_maps.astype(np.float64), maps.astype(np.float64)
    ref_scores, scores = ref_scores.astype(np.float64), scores.astype(np.float64)
    if maps.shape != ref_maps.shape or scores.shape != ref_scores.shape:
        return {"shape_mismatch": f"{maps.shape} {scores.shape}", "map_max_rel": float("inf"),
                "map_mean_rel": float("inf"),
                "score_max_rel": float("inf"), "decision_flips": None}
    if span is None:
        span = map_span(ref_maps)
    diff = np.abs(maps - ref_maps)
    map_abs = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    rel = np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)
    score_rel = float(rel.max()) if np.isfinite(rel).all() else float("inf")
    thresholds = [float(t) for t in thresholds]
    # a score within float rounding of a threshold (a category calibrated on one normal image
    # has that image's score as its threshold) is a tie that any runtime may decide either way
    flips = sum(int(((exceeds(ref_scores, t) != exceeds(scores, t))
                     & (np.abs(ref_scores - t) > TIE_REL * abs(t))).sum()) for t in thresholds)
    return {
        "map_max_abs": map_abs,
        "map_range": span,
        "map_max_rel": map_abs / span,
        "map_mean_rel": float(diff.mean()) / span if np.isfinite(diff).all() else float("inf"),
        "score_max_rel": score_rel,
        "decision_flips": flips if thresholds else None,
    }


def map_span(ref_maps: np.ndarray) -> float:
    """The range of the reference maps (their magnitude where they are constant)."""
    ref_maps = ref_maps.astype(np.float64)
    return float(ref_maps.max() - ref_maps.min()) or max(float(np.abs(ref_maps).max()), 1e-12)


def worst(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the figures of several runs (full batch, batch 1) keeping the worst of each."""
    out = dict(figures[0])
    for fig in figures[1:]:
        for key in ("map_max_abs", "map_max_rel", "map_mean_rel", "score_max_rel"):
            out[key] = max(out.get(key, 0.0), fig.get(key, 0.0))
        if fig.get("decision_flips") is not None:
            out["decision_flips"] = (out.get("decision_flips") or 0) + fig["decision_flips"]
    return out


def passes(fig: dict[str, Any], tol: dict[str, Any]) -> bool:
    """Whether the figures meet the limits `tol` (an entry of TOLERANCES, maybe overridden)."""
    ok = fig["map_mean_rel"] <= tol["map_mean_rel"] and fig["score_max_rel"] <= tol["score_rel"]
    if tol["map_rel"] is not None:
        ok = ok and fig["map_max_rel"] <= tol["map_rel"]
    if tol["flips"] is not None and fig.get("decision_flips") is not None:
        ok = ok and fig["decision_flips"] <= tol["flips"]
    return bool(ok)


def finite_json(fig: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy (strict JSON has no inf): non-finite figures become None."""
    return json_safe(fig)
