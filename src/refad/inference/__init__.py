"""Scoring: the one `Scorer`, calibration from normal images, evaluation and prediction."""

from refad.inference.calibrate import calibrate
from refad.inference.evaluate import evaluate_run
from refad.inference.predict import ImageResult, PredictionBatch, predict_images
from refad.inference.scorer import COMPILE_MODES, Scorer, score_levels

__all__ = [
    "COMPILE_MODES",
    "ImageResult",
    "PredictionBatch",
    "Scorer",
    "calibrate",
    "evaluate_run",
    "predict_images",
    "score_levels",
]
