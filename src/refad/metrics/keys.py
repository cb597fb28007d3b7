"""Order-preserving int32 keys for float32 scores.

Why: integer keys sort faster than floats, split cleanly into a 16-bit bucket and a 16-bit
remainder (the basis of the exact 2-bytes-per-pixel store), and truncating their low bits is a
range-free, mergeable binning (the binned mode). The map is a bijection on non-NaN float32 values
(with -0.0 folded onto +0.0, as float comparison does), so no information or tie is lost.
"""

from __future__ import annotations

import numpy as np

KEY_LOW_BITS = 16
"""Bits of a key kept per pixel by the exact store; the remaining high bits name its bucket."""
NUM_BUCKETS = 1 << (32 - KEY_LOW_BITS)
BUCKET_OFFSET = NUM_BUCKETS // 2
"""Added to ``key >> 16`` (in [-32768, 32767]) to get a bucket index in [0, 65536)."""

MAGNITUDE_BITS = 0x7FFFFFFF  # every bit of a float32 but the sign
_KEY_NEG_INF = -2139095041  # key of float32 -inf: bits 0xFF800000 with magnitude bits flipped
_KEY_POS_INF = 0x7F800000


def float32_to_key(x: np.ndarray) -> np.ndarray:
    """Return int32 keys whose signed integer order equals the float order of ``x`` (float32)."""
    bits = (x + np.float32(0.0)).view(np.int32)  # +0.0 folds -0.0 onto +0.0; returns a copy
    flip = bits >> 31  # -1 for negative floats, 0 otherwise
    flip &= MAGNITUDE_BITS
    bits ^= flip  # negative floats: reverse the order of their magnitude bits
    return bits


def key_to_float32(keys: np.ndarray) -> np.ndarray:
    """Invert :func:`float32_to_key`; keys outside the finite/inf range are clamped to +-inf."""
    k = np.clip(np.asarray(keys, dtype=np.int64), _KEY_NEG_INF, _KEY_POS_INF).astype(np.int32)
    flip = (k >> 31) & MAGNITUDE_BITS
    return (k ^ flip).view(np.float32)
