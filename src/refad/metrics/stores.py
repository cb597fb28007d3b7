"""Streaming pixel stores that turn batches of (key, label, region size) into a RankTable.

Exact store, why it is small: a float32 score becomes an int32 key whose high 16 bits name one of
65,536 buckets. Normal pixels are staged, sorted in runs of ``run_size`` keys, and kept as their
low 16 bits only (grouped by bucket, plus per-run bucket offsets): 2 bytes per normal pixel,
lossless. Anomalous pixels (a few percent) keep their full key and region size (8 bytes).
At compute time, only buckets that contain an anomalous score are decoded, a bounded range at a
time, to count the normal pixels below / at each distinct anomalous score.

Binned store: three histograms over keys truncated to ``log2(bins)`` bits (sign, exponent and the
top mantissa bits: a float with fewer mantissa bits, over the full float32 range, no score range
to guess). Memory is O(bins) whatever the test-set size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Ops
from .keys import BUCKET_OFFSET, KEY_LOW_BITS, NUM_BUCKETS, key_to_float32
from .ranks import RankTable

_MAX_SPAN_BUCKETS = 256  # buckets decoded together at most (relative keys stay below 2**24)
# Smallest key of each bucket (int32); entry b is where bucket b starts in a sorted run.
_BUCKET_EDGES_LOW = (
    (np.arange(NUM_BUCKETS, dtype=np.int64) - BUCKET_OFFSET) << KEY_LOW_BITS
).astype(np.int32)
_BUCKET_EDGES_LOW.flags.writeable = False


@dataclass
class _Run:
    """One sorted run of normal-pixel keys: low 16 bits, bucket offsets on the host."""

    low: Any  # int16 array/tensor, grouped by bucket, ascending within each bucket
    offsets: np.ndarray  # int64 (NUM_BUCKETS + 1,): bucket b is low[offsets[b]:offsets[b+1]]


class _Staging:
    """Collects incoming key arrays until ``run_size`` keys are waiting (amortises sorts)."""

    def __init__(self) -> None:
        self.parts: list = []
        self.count = 0

    def add(self, x: Any, n: int) -> None:
        if n:
            self.parts.append(x)
            self.count += n

    def take(self) -> list:
        parts, self.parts, self.count = self.parts, [], 0
        return parts


class ExactPixelStore:
    """Lossless store: 2 bytes per normal pixel, 8 bytes per anomalous pixel."""

    def __init__(self, ops: Ops, run_size: int, group_size: int) -> None:
        self._ops = ops
        self._run_size = run_size
        self._group_size = group_size
        self._stage = _Staging()
        self._runs: list[_Run] = []
        self._pos_keys: list = []
        self._pos_sizes: list = []
        self._n_pos = 0
        self._n_regions = 0

    def add(self, neg_keys: Any, pos_keys: Any, pos_sizes: Any, n_regions: int) -> None:
        ops = self._ops
        self._stage.add(neg_keys, int(neg_keys.shape[0]))
        if self._stage.count >= self._run_size:
            self._flush()
        n_pos = int(pos_keys.shape[0])
        if n_pos:
            self._pos_keys.append(pos_keys)
            self._pos_sizes.append(ops.as_int32(pos_sizes))
            self._n_pos += n_pos
        self._n_regions += n_regions

    def _flush(self) -> None:
        if not self._stage.count:
            return
        ops = self._ops
        keys = ops.sort(ops.cat(self._stage.take()))
        # Keys are sorted, so bucket boundaries are 65,536 binary searches (no pass over keys).
        edges = ops.from_host(_BUCKET_EDGES_LOW[1:])
        offsets = np.zeros(NUM_BUCKETS + 1, dtype=np.int64)
        offsets[1:-1] = ops.host(ops.searchsorted(keys, edges, right=False))
        offsets[-1] = keys.shape[0]
        self._runs.append(_Run(low=ops.low16(keys), offsets=offsets))

    def nbytes(self) -> int:
        """Bytes held by the state (runs, staged keys, anomalous pixels)."""
        runs = sum(int(r.low.shape[0]) * 2 + r.offsets.nbytes for r in self._runs)
        return runs + 4 * self._stage.count + 8 * self._n_pos

    def table(self) -> RankTable:
        """Exact rank table of everything added so far (the state is left usable)."""
        ops = self._ops
        self._flush()
        per_bucket = np.zeros(NUM_BUCKETS, dtype=np.int64)
        for run in self._runs:
            per_bucket += np.diff(run.offsets)
        below = np.zeros(NUM_BUCKETS + 1, dtype=np.int64)  # normal pixels in buckets < b
        np.cumsum(per_bucket, out=below[1:])
        n_neg = int(below[-1])
        if not self._n_pos:
            return _empty_table(n_neg, self._n_regions)
        # Sort (key, region size) pairs packed in one int64 on the device (no argsort), then
        # group on the host: float sums stay off the GPU, where weighted histograms are not
        # deterministic (and are refused under torch.use_deterministic_algorithms).
        packed = ops.as_int64(ops.cat(self._pos_keys))
        packed <<= 32
        packed |= ops.as_int64(ops.cat(self._pos_sizes))
        packed = ops.host(ops.sort(packed))
        inv_size = 1.0 / (packed & 0xFFFFFFFF).astype(np.float64)
        packed >>= 32
        keys = packed.astype(np.int32)
        del packed
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        uniq = keys[starts]
        counts = np.diff(np.r_[starts, keys.size])
        del keys
        weight = np.add.reduceat(inv_size, starts)
        del inv_size
        neg_lt, neg_le = self._count_below(uniq, below)
        return RankTable(
            values=key_to_float32(uniq).astype(np.float64),
            pos_count=counts.astype(np.int64),
            neg_lt=neg_lt,
            neg_le=neg_le,
            n_pos=self._n_pos,
            n_neg=n_neg,
            region_weight=weight,
            n_regions=self._n_regions,
        )

    def _count_below(self, uniq: np.ndarray, below: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normal pixels < and <= each query key, visiting only buckets that hold a query."""
        q_bucket = (uniq >> KEY_LOW_BITS).astype(np.int64) + BUCKET_OFFSET
        q_low = (uniq & 0xFFFF).astype(np.int64)
        neg_lt = np.empty(uniq.size, dtype=np.int64)
        neg_le = np.empty(uniq.size, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, q_bucket[1:] != q_bucket[:-1]])
        ends = np.r_[starts[1:], uniq.size]
        buckets = q_bucket[starts]
        i = 0
        while i < buckets.size:
            b0 = int(buckets[i])
            j = i + 1
            while (
                j < buckets.size
                and buckets[j] - b0 < _MAX_SPAN_BUCKETS
                and below[buckets[j] + 1] - below[b0] <= self._group_size
            ):
                j += 1
            b1 = int(buckets[j - 1]) + 1
            sl = slice(int(starts[i]), int(ends[j - 1]))
            rel = ((q_bucket[sl] - b0) << KEY_LOW_BITS) | q_low[sl]
            lt, le = self._count_in_range(b0, b1, rel)
            neg_lt[sl] = below[b0] + lt
            neg_le[sl] = below[b0] + le
            i = j
        return neg_lt, neg_le

    def _count_in_range(self, b0: int, b1: int, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts within buckets [b0, b1) for queries given as keys relative to bucket b0."""
        ops = self._ops
        n = sum(int(r.offsets[b1] - r.offsets[b0]) for r in self._runs)
        if n == 0:
            zero = np.zeros(rel.size, dtype=np.int64)
            return zero, zero
        span = (b1 - b0) << KEY_LOW_BITS
        if b1 - b0 == 1 and n >= span:
            # One dense bucket (possibly huge): histogram its low bits run by run, no concat.
            hist = ops.zeros(span)
            for r in self._runs:
                seg = r.low[int(r.offsets[b0]) : int(r.offsets[b1])]
                if seg.shape[0]:
                    hist += ops.bincount(ops.unsigned16(seg), span)
            return _lookup(ops.host(hist), rel)
        rel_keys = ops.cat([self._relative_keys(r, b0, b1) for r in self._runs])
        if span <= 2 * n:  # dense range: a histogram is cheaper than a sort
            return _lookup(ops.host(ops.bincount(rel_keys, span)), rel)
        rel_keys = ops.sort(rel_keys)
        q = ops.from_host(rel.astype(np.int32))
        lt = ops.host(ops.searchsorted(rel_keys, q, right=False)).astype(np.int64)
        le = ops.host(ops.searchsorted(rel_keys, q, right=True)).astype(np.int64)
        return lt, le

    def _relative_keys(self, run: _Run, b0: int, b1: int) -> Any:
        """Keys of one run in buckets [b0, b1), relative to bucket b0 (int32, < 2**24)."""
        ops = self._ops
        lo, hi = int(run.offsets[b0]), int(run.offsets[b1])
        counts = ops.from_host(np.diff(run.offsets[b0 : b1 + 1]))
        high = ops.repeat(ops.arange_int32(b1 - b0), counts)
        return (high << KEY_LOW_BITS) | ops.as_int32(ops.unsigned16(run.low[lo:hi]))


def _lookup(hist: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts < and <= each relative key from a histogram over relative keys."""
    upto = np.cumsum(hist)
    le = upto[rel].astype(np.int64)
    return le - hist[rel].astype(np.int64), le


def _empty_table(n_neg: int, n_regions: int) -> RankTable:
    empty_i = np.zeros(0, dtype=np.int64)
    return RankTable(
        values=np.zeros(0),
        pos_count=empty_i,
        neg_lt=empty_i,
        neg_le=empty_i,
        n_pos=0,
        n_neg=n_neg,
        region_weight=np.zeros(0),
        n_regions=n_regions,
    )


class BinnedPixelStore:
    """Histogram store: O(bins) memory; scores are floored to their bin's lower edge."""

    def __init__(self, ops: Ops, bins: int, run_size: int) -> None:
        self._ops = ops
        self._bins = bins
        self._shift = 32 - (bins.bit_length() - 1)
        self._run_size = min(run_size, 4 * bins)  # staging only amortises the O(bins) pass
        self._neg_stage = _Staging()
        self._pos_stage = _Staging()
        self._size_stage: list = []
        self._neg_hist = ops.zeros(bins)  # on the device: integer counts only
        self._pos_hist = np.zeros(bins, dtype=np.int64)  # anomalous pixels: few, on the host,
        self._weight_hist = np.zeros(bins, dtype=np.float64)  # where float sums are deterministic
        self._n_regions = 0

    def add(self, neg_keys: Any, pos_keys: Any, pos_sizes: Any, n_regions: int) -> None:
        self._neg_stage.add(neg_keys, int(neg_keys.shape[0]))
        n_pos = int(pos_keys.shape[0])
        if n_pos:
            self._pos_stage.add(pos_keys, n_pos)
            self._size_stage.append(pos_sizes)
        self._n_regions += n_regions
        if self._neg_stage.count + self._pos_stage.count >= self._run_size:
            self._flush()

    def _bin(self, keys: Any) -> Any:
        return self._ops.shift_right(keys, self._shift) + (self._bins >> 1)

    def _flush(self) -> None:
        ops = self._ops
        if self._neg_stage.count:
            self._neg_hist += ops.bincount(self._bin(ops.cat(self._neg_stage.take())), self._bins)
        if self._pos_stage.count:
            idx = ops.host(self._bin(ops.cat(self._pos_stage.take())))
            inv_size = 1.0 / ops.host(ops.cat(self._size_stage)).astype(np.float64)
            self._size_stage = []
            self._pos_hist += np.bincount(idx, minlength=self._bins)
            self._weight_hist += np.bincount(idx, weights=inv_size, minlength=self._bins)

    def nbytes(self) -> int:
        return 24 * self._bins + 4 * self._neg_stage.count + 8 * self._pos_stage.count

    def table(self) -> RankTable:
        ops = self._ops
        self._flush()
        neg = ops.host(self._neg_hist).astype(np.int64)
        pos = self._pos_hist
        weight = self._weight_hist
        occupied = np.flatnonzero(pos)
        upto = np.cumsum(neg)
        lower_edge = (occupied.astype(np.int64) - (self._bins >> 1)) << self._shift
        return RankTable(
            values=key_to_float32(lower_edge).astype(np.float64),
            pos_count=pos[occupied],
            neg_lt=upto[occupied] - neg[occupied],
            neg_le=upto[occupied],
            n_pos=int(pos.sum()),
            n_neg=int(upto[-1]) if upto.size else 0,
            region_weight=weight[occupied],
            n_regions=self._n_regions,
        )
