"""What the server needs from a model: a small protocol, whatever runs the model underneath.

The HTTP layer, the micro-batcher and the page only talk to a :class:`Backend`. Two kinds exist:

* :mod:`refad.serve.torch_backend` - a trained run folder, scored with PyTorch.
* :mod:`refad.serve.deploy_backend` - an exported folder, scored with the torch-free
  ``refad.deploy.Inferencer`` (ONNX / OpenVINO).

Both implement the three methods below and reuse :func:`check_category` and
:func:`check_threshold`; both turn a map and a score into refad's one
:class:`~refad.pipeline.postprocess.Prediction` through ``refad.pipeline.postprocess``, at the
thresholds of the model's typed ``Calibration`` (a request's own threshold, source
``"request"``, comes first), so the two answer a request identically, as ``refad predict``
would; :func:`refad.serve.server.make_backend_factory` picks one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from refad.pipeline.calibration import Calibration
from refad.pipeline.calibration import Thresholds as ImageThresholds
from refad.pipeline.postprocess import Prediction
from refad.runs.layout import UNIFIED

MAX_CATEGORY_CHARS = 100


# One request batch: the images, and per image its category and requested threshold.
Images = Sequence[np.ndarray]
Categories = Sequence[str | None]
Thresholds = Sequence[float | None]


class RequestError(ValueError):
    """A request the model cannot answer as asked (unknown category...): the client's fault."""


class Backend(Protocol):
    """One model in memory; ``predict_batch`` is called from one worker thread at a time."""

    def info(self) -> dict[str, Any]:
        """Model card: backend, method, backbone, input_size, mode, categories,
        category_required, thresholds {"global": float|None, "categories": {c: float}},
        refad_version, device."""
        ...

    def warmup(self, batch_size: int = 1) -> list[Prediction]:
        """Score a dummy batch of `batch_size` (the largest the server forms) so no real
        request pays for lazy initialisation; returns its results (the server renders one)."""
        ...

    def predict_batch(
        self, images: Images, categories: Categories, thresholds: Thresholds
    ) -> list[Prediction]:
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


def deciding_category(category: str | None, units: Sequence[str]) -> str | None:
    """The category that decides an image: the one asked for, or a per-category model's only
    one (the answer said null while its threshold was that category's)."""
    if category is None and UNIFIED not in units and len(units) == 1:
        return units[0]
    return category


def check_threshold(value: float | None) -> None:
    """A requested threshold must be a finite positive number (scores are errors, >= 0)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise RequestError("threshold must be a finite number > 0")


REQUEST = "request"  # the threshold source of a request's own threshold


def request_thresholds(
    thresholds: ImageThresholds, requested: float | None
) -> ImageThresholds:
    """The calibrated `thresholds` of an image, or its request's own threshold where given."""
    return thresholds if requested is None else thresholds.overridden(requested, REQUEST)


def threshold_card(calibrations: Mapping[str, Calibration]) -> dict[str, Any]:
    """The model card's thresholds, from each unit's calibration: a unified model's global
    one and its categories' own, or each per-category model's own (no global one)."""
    if UNIFIED in calibrations:
        unified = calibrations[UNIFIED]
        return {"global": unified.threshold, "categories": unified.category_thresholds()}
    return {"global": None, "categories": {u: c.threshold for u, c in calibrations.items()
                                           if c.threshold is not None}}
