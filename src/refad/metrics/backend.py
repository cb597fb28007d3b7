"""Array back-ends (NumPy on the host, torch on any device) behind one small interface.

Why: the streaming stores are written once against these primitives, so CPU and CUDA runs use
the same algorithm and produce identical integer counts. Device policy lives here too: state
stays where the caller put it; inputs are moved only to a device the caller named explicitly.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from refad.errors import DataError

from .keys import MAGNITUDE_BITS, float32_to_key


def is_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch for NumPy-only callers."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_host(x: Any) -> np.ndarray:
    """Host NumPy view/copy of any array-like; small image-level data only (explicit copy)."""
    if is_tensor(x):
        x = x.detach()
        if x.dtype.is_floating_point and x.dtype not in _numpy_float_dtypes():
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _numpy_float_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.float32, torch.float64)


class NumpyOps:
    """Host back-end: NumPy arrays, torch CPU tensors accepted zero-copy."""

    name = "numpy"
    device = "cpu"

    def _check(self, x: Any, what: str) -> None:
        if is_tensor(x) and x.device.type != "cpu":
            raise DataError(
                f"MetricAccumulator.update: {what} are on {x.device} but the accumulator keeps its "
                "state on the host; pass device= to MetricAccumulator to evaluate on that device"
            )

    def maps(self, x: Any) -> np.ndarray:
        self._check(x, "maps")
        return np.ascontiguousarray(to_host(x), dtype=np.float32)

    def masks(self, x: Any) -> np.ndarray:
        self._check(x, "masks")
        a = to_host(x)
        return a if a.dtype == np.bool_ else a > 0.5

    def host(self, x: np.ndarray) -> np.ndarray:
        return x

    def from_host(self, a: np.ndarray) -> np.ndarray:
        return a

    def has_nan(self, x: np.ndarray) -> bool:
        return bool(np.isnan(x).any())

    def keys(self, x: np.ndarray) -> np.ndarray:
        return float32_to_key(x)

    def cat(self, xs: list[np.ndarray]) -> np.ndarray:
        return xs[0] if len(xs) == 1 else np.concatenate(xs)

    def sort(self, x: np.ndarray) -> np.ndarray:
        out = x.copy() if not x.flags.owndata else x
        out.sort()
        return out

    def bincount(self, x: np.ndarray, minlength: int) -> np.ndarray:
        return np.bincount(x, minlength=minlength)

    def searchsorted(self, a: np.ndarray, v: np.ndarray, right: bool) -> np.ndarray:
        return np.searchsorted(a, v, side="right" if right else "left")

    def repeat(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.repeat(values, counts)

    def low16(self, keys: np.ndarray) -> np.ndarray:
        return keys.astype(np.int16)  # wraps: keeps the low 16 bits

    def unsigned16(self, lo: np.ndarray) -> np.ndarray:
        return lo.view(np.uint16)

    def shift_right(self, x: np.ndarray, bits: int) -> np.ndarray:
        return x >> bits

    def as_int32(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.int32, copy=False)

    def as_int64(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64, copy=False)

    def arange_int32(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int32)

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.int64)


class TorchOps:
    """Device back-end: torch tensors on ``device`` (CUDA in practice; CPU for tests)."""

    name = "torch"

    def __init__(self, device: Any, explicit: bool) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self._explicit = explicit

    def _tensor(self, x: Any, what: str):
        torch = self._torch
        if not is_tensor(x):
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
            if self.device.type != "cpu" and not self._explicit:
                raise DataError(
                    f"MetricAccumulator.update: {what} are host arrays but the accumulator keeps "
                    f"its state on {self.device}; pass device= to allow the copy"
                )
        elif x.device != self.device and not self._explicit:
            raise DataError(
                f"MetricAccumulator.update: {what} are on {x.device} but the accumulator keeps "
                f"its state on {self.device}; pass device= to allow the copy"
            )
        return x.detach().to(self.device)

    def maps(self, x: Any):
        return self._tensor(x, "maps").to(self._torch.float32).contiguous()

    def masks(self, x: Any):
        t = self._tensor(x, "masks")
        return t if t.dtype == self._torch.bool else t > 0.5

    def host(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def from_host(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        return self._torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)

    def has_nan(self, x) -> bool:
        return bool(self._torch.isnan(x).any().item())

    def keys(self, x):
        bits = (x + 0.0).view(self._torch.int32)
        bits ^= (bits >> 31) & MAGNITUDE_BITS
        return bits

    def cat(self, xs: list):
        return xs[0] if len(xs) == 1 else self._torch.cat(xs)

    def sort(self, x):
        return self._torch.sort(x).values

    def bincount(self, x, minlength: int):
        """Integer counts only: deterministic on CUDA (weighted sums are done on the host)."""
        return self._torch.bincount(x, minlength=minlength)

    def searchsorted(self, a, v, right: bool):
        return self._torch.searchsorted(a, v, right=right)

    def repeat(self, values, counts):
        return self._torch.repeat_interleave(values, counts)

    def low16(self, keys):
        return keys.to(self._torch.int16)  # wraps: keeps the low 16 bits

    def unsigned16(self, lo):
        return lo.to(self._torch.int32) & 0xFFFF

    def shift_right(self, x, bits: int):
        return x >> bits

    def as_int32(self, x):
        return x.to(self._torch.int32)

    def as_int64(self, x):
        return x.to(self._torch.int64)

    def arange_int32(self, n: int):
        return self._torch.arange(n, dtype=self._torch.int32, device=self.device)

    def zeros(self, n: int):
        return self._torch.zeros(n, dtype=self._torch.int64, device=self.device)


Ops = NumpyOps | TorchOps


def make_ops(device: Any, sample: Any) -> Ops:
    """Back-end for an accumulator: the named device, else where the first maps live."""
    if device is not None:
        return TorchOps(device, explicit=True)
    if is_tensor(sample) and sample.device.type != "cpu":
        return TorchOps(sample.device, explicit=False)
    return NumpyOps()
