"""MetricAccumulator: batch-by-batch evaluation of the seven image/pixel metrics.

Why streaming: evaluation must run on any test-set size, so the accumulator never keeps the maps
themselves. Image scores are tiny and kept exactly (float64); pixels go to a store that holds
2 bytes per normal pixel (exact mode) or a fixed set of histograms (binned mode).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from refad.errors import ConfigError, DataError

from .backend import Ops, make_ops, to_host
from .ranks import (
    au_pro_from_table,
    auroc_from_table,
    average_precision_from_table,
    f1max_from_table,
    table_from_scores,
)
from .regions import region_sizes
from .stores import BinnedPixelStore, ExactPixelStore

METRIC_NAMES: tuple[str, ...] = (
    "i_auroc",
    "i_ap",
    "i_f1max",
    "p_auroc",
    "p_ap",
    "p_f1max",
    "au_pro",
)
THRESHOLD_NAMES: tuple[str, ...] = ("i_f1_threshold", "p_f1_threshold")

DEFAULT_BINS = 1 << 20
DEFAULT_RUN_SIZE = 1 << 24
DEFAULT_GROUP_SIZE = 1 << 22
_MIN_BINS, _MAX_BINS = 1 << 8, 1 << 24


def binary_labels(x: Any, what: str) -> np.ndarray:
    """Host bool array from bool or {0, 1} labels; anything else is a data error."""
    a = to_host(x)
    if a.dtype == np.bool_:
        return a.ravel()
    a = a.ravel()
    if a.size and not np.isin(a, (0, 1)).all():
        raise DataError(f"{what}: labels must be 0/1 or bool, got values {np.unique(a)[:5]}")
    return a.astype(bool)


def finite_scores(x: Any, what: str) -> np.ndarray:
    """Host float64 1-D scores; NaN has no rank, so it is rejected."""
    a = np.asarray(to_host(x), dtype=np.float64).ravel()
    if np.isnan(a).any():
        raise DataError(f"{what}: scores contain NaN")
    return a


class MetricAccumulator:
    """Collects one category's test set and computes METRIC_NAMES plus the F1max thresholds.

    mode="exact" (default) gives the reference values; mode="binned" floors pixel scores to
    ``bins`` (a power of two in [2**8, 2**24]) order-preserving float bins. ``device=None``
    keeps NumPy for host inputs and torch on the inputs' device for accelerator tensors; naming
    a device runs torch there and copies inputs to it.
    """

    def __init__(
        self,
        mode: str = "exact",
        bins: int = DEFAULT_BINS,
        device: Any = None,
        fpr_limit: float = 0.3,
        run_size: int = DEFAULT_RUN_SIZE,
        group_size: int = DEFAULT_GROUP_SIZE,
        mixed_sizes: bool = False,
    ) -> None:
        if mode not in ("exact", "binned"):
            raise ConfigError(f"metrics.mode: expected 'exact' or 'binned', got {mode!r}")
        if not (_MIN_BINS <= bins <= _MAX_BINS) or bins & (bins - 1):
            raise ConfigError(f"metrics.bins: expected a power of two in [256, 2**24], got {bins}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ConfigError(f"metrics.fpr_limit: expected a value in (0, 1], got {fpr_limit}")
        if run_size < 1 or group_size < 1:
            raise ConfigError("metrics.run_size / group_size: expected positive integers")
        self.mode = mode
        self.bins = bins
        self.fpr_limit = float(fpr_limit)
        self._device = device
        self._run_size = run_size
        self._group_size = group_size
        # maps may change size between updates (tiled images of several sizes, added one by
        # one): the pixels pool as for one size; otherwise a change is a caller's mistake
        self.mixed_sizes = mixed_sizes
        self.reset()

    def reset(self) -> None:
        """Forget everything added (the configuration is kept)."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._ops: Ops | None = None
        self._store: ExactPixelStore | BinnedPixelStore | None = None
        self._with_pixels: bool | None = None
        self._map_shape: tuple[int, int] | None = None

    @property
    def num_images(self) -> int:
        return sum(s.size for s in self._scores)

    @property
    def state_bytes(self) -> int:
        """Bytes of accumulated state (image arrays + pixel store), for memory reports."""
        images = 9 * self.num_images
        return images + (self._store.nbytes() if self._store is not None else 0)

    def update(
        self,
        image_scores: Any,
        image_labels: Any,
        maps: Any = None,
        masks: Any = None,
    ) -> None:
        """Add a batch: (B,) scores and 0/1 labels, optionally (B,H,W) maps and masks.

        Masks may be bool or numeric (binarised at > 0.5); maps may also be (B,1,H,W). Either
        every batch has maps and masks or none has.
        """
        scores = finite_scores(image_scores, "MetricAccumulator.update image_scores")
        labels = binary_labels(image_labels, "MetricAccumulator.update image_labels")
        if scores.size != labels.size:
            raise DataError(
                f"MetricAccumulator.update: {scores.size} image scores but {labels.size} labels"
            )
        with_pixels = maps is not None or masks is not None
        if with_pixels and (maps is None or masks is None):
            raise DataError("MetricAccumulator.update: maps and masks must be given together")
        if self._with_pixels is not None and with_pixels != self._with_pixels:
            raise DataError("MetricAccumulator.update: some batches have maps/masks and others not")
        if with_pixels:
            self._add_pixels(maps, masks, scores.size)
        self._with_pixels = with_pixels
        self._scores.append(scores)
        self._labels.append(labels)

    def _add_pixels(self, maps: Any, masks: Any, batch: int) -> None:
        if self._ops is None:
            self._ops = make_ops(self._device, maps)
        ops = self._ops
        m = _squeeze_channel(ops.maps(maps))
        g = _squeeze_channel(ops.masks(masks))
        if tuple(m.shape) != tuple(g.shape) or m.ndim != 3 or m.shape[0] != batch:
            raise DataError(
                f"MetricAccumulator.update: maps {tuple(m.shape)} and masks {tuple(g.shape)} "
                f"must both be (B, H, W) with B = {batch} image scores"
            )
        if (not self.mixed_sizes and self._map_shape is not None
                and tuple(m.shape[1:]) != self._map_shape):
            raise DataError(
                f"MetricAccumulator.update: map size {tuple(m.shape[1:])} differs from the "
                f"first batch's {self._map_shape}"
            )
        self._map_shape = tuple(m.shape[1:])
        if ops.has_nan(m):
            raise DataError("MetricAccumulator.update: anomaly maps contain NaN")
        keys = ops.keys(m)
        del m
        sizes, n_regions = region_sizes(ops.host(g))
        if self._store is None:
            self._store = self._new_store(ops)
        self._store.add(keys[~g], keys[g], ops.from_host(sizes), n_regions)

    def _new_store(self, ops: Ops) -> ExactPixelStore | BinnedPixelStore:
        if self.mode == "exact":
            return ExactPixelStore(ops, self._run_size, self._group_size)
        return BinnedPixelStore(ops, self.bins, self._run_size)

    def compute(self) -> dict[str, float]:
        """All metrics as fractions in [0, 1]; NaN where undefined (see docs/metrics.md)."""
        res = dict.fromkeys(METRIC_NAMES + THRESHOLD_NAMES, math.nan)
        if self._scores:
            scores = np.concatenate(self._scores)
            labels = np.concatenate(self._labels)
            t = table_from_scores(scores[labels], scores[~labels])
            res["i_auroc"] = auroc_from_table(t)
            res["i_ap"] = average_precision_from_table(t)
            res["i_f1max"], res["i_f1_threshold"] = f1max_from_table(t)
        if self._store is not None:
            t = self._store.table()
            res["p_auroc"] = auroc_from_table(t)
            res["p_ap"] = average_precision_from_table(t)
            res["p_f1max"], res["p_f1_threshold"] = f1max_from_table(t)
            res["au_pro"] = au_pro_from_table(t, self.fpr_limit)
        return res


def _squeeze_channel(x: Any) -> Any:
    """Accept (B,1,H,W) as well as (B,H,W)."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x
