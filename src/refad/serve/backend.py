"""What the server needs from a model: a small protocol, whatever runs the model underneath.

The HTTP layer, the micro-batcher and the page only talk to a :class:`Backend`. Two kinds exist:

* :mod:`refad.serve.torch_backend` - a trained run folder, scored with PyTorch.
* :mod:`refad.serve.deploy_backend` - an exported folder, scored with the torch-free
  ``refad.deploy.Inferencer`` (ONNX / OpenVINO).

Both implement the three methods below and reuse :func:`resolve_threshold`,
:func:`check_category` and :func:`decide`, so the two answer a request identically;
:func:`refad.serve.server.make_backend_factory` picks one.

The threshold rules live here, not in a backend, so that a request means the same thing
whichever backend answers it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

MAX_CATEGORY_CHARS = 100


# One request batch: the images, and per image its category and requested threshold.
Images = Sequence[np.ndarray]
Categories = Sequence[str | None]
Thresholds = Sequence[float | None]

class RequestError(ValueError):
    """A request the model cannot answer as asked (unknown category...): the client's fault."""


@dataclass
class ImageResult:
    """The verdict on one image. Pictures are rendered on first access (most clients skip them).

    ``anomalous`` is None when there is no threshold or the score is not finite; the threshold
    ``source`` is ``"category:<c>"``, ``"global"``, ``"request"`` or None.
    """

    score: float
    threshold: float | None
    threshold_source: str | None
    anomalous: bool | None
    normalised_score: float | None
    anomaly_map: np.ndarray  # (H, W) float32 at the image's own size
    # (H, W) bool: pixels above the calibrated pixel threshold; None when the model has none
    # (not calibrated) or the map is not finite, as `refad predict` writes no mask then
    mask: np.ndarray | None
    _heatmap: Callable[[], np.ndarray] = field(repr=False)
    _overlay: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # the category that decided: the one asked for, or a per-category run's only one (the
    # answer said null while its threshold was that category's)
    category: str | None = None

    @property
    def heatmap(self) -> np.ndarray:
        """(H, W, 3) uint8 colour map of the anomaly map, on the run's calibrated range."""
        if "heatmap" not in self._cache:
            self._cache["heatmap"] = self._heatmap()
        return self._cache["heatmap"]

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The heatmap blended onto ``image`` (the RGB array that was scored)."""
        return self._overlay(image)


class Backend(Protocol):
    """One model in memory; ``predict_batch`` is called from one worker thread at a time."""

    def info(self) -> dict[str, Any]:
        """Model card: backend, method, backbone, input_size, mode, categories,
        category_required, thresholds {"global": float|None, "categories": {c: float}},
        refad_version, device."""
        ...

    def warmup(self, batch_size: int = 1) -> list[ImageResult]:
        """Score a dummy batch of `batch_size` (the largest the server forms) so no real
        request pays for lazy initialisation; returns its results (the server renders one)."""
        ...

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[ImageResult]:
        """Score (H, W, 3) uint8 RGB images; one category and requested threshold per image."""
        ...


def check_category(info: dict[str, Any], category: str | None) -> None:
    """Refuse a category the model does not know, or a missing one where a model needs it."""
    known: list[str] = list(info.get("categories") or [])
    if category is None:
        if info.get("category_required"):
            raise RequestError(
                "this run has one model per category; name the category "
                f"(one of: {', '.join(known)})"
            )
        return
    if not category or len(category) > MAX_CATEGORY_CHARS or not category.isprintable():
        raise RequestError(
            f"category must be 1 to {MAX_CATEGORY_CHARS} printable characters"
        )
    if known and category not in known:
        shown = category if len(category) <= 40 else category[:40] + "..."
        raise RequestError(f"unknown category {shown!r}; known: {', '.join(known)}")


def check_threshold(value: float | None) -> None:
    """A requested threshold must be a finite positive number (scores are errors, >= 0)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise RequestError("threshold must be a finite number > 0")


def resolve_threshold(
    info: dict[str, Any], category: str | None, requested: float | None
) -> tuple[float | None, str | None]:
    """The threshold that decides an image, and where it came from.

    Order: the request's own, then the category's calibrated one, then the run's global one.
    """
    if requested is not None:
        return float(requested), "request"
    thresholds = info.get("thresholds") or {}
    per_category = thresholds.get("categories") or {}
    if category is not None and per_category.get(category) is not None:
        return float(per_category[category]), f"category:{category}"
    if thresholds.get("global") is not None:
        return float(thresholds["global"]), "global"
    return None, None


def decide(score: float, threshold: float | None) -> tuple[bool | None, float | None]:
    """(anomalous, normalised score): same rule as ``refad predict`` (score > threshold)."""
    if threshold is None or not math.isfinite(score):
        return None, None
    normalised = score / threshold if threshold > 0 else None
    return bool(score > threshold), normalised
