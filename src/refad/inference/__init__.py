"""Scoring: the one `Scorer`, calibration from normal images, evaluation and prediction.

Names load on first use, so that `refad.inference.batches` (reading, batching and naming the
images to predict; numpy and PIL only) serves the torch-free `refad predict --model`.
"""

from __future__ import annotations

from refad.lazy import lazy_attributes

_EXPORTS = {
    "ImageResult": "batches", "PredictionBatch": "batches", "scored_batches": "batches",
    "calibrate": "calibration",
    "evaluate_run": "evaluate",
    "predict_images": "predict",
    "COMPILE_MODES": "scorer", "Scorer": "scorer", "score_levels": "scorer",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes("refad.inference", _EXPORTS)
