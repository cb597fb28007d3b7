"""refad.metrics: exact, streaming anomaly-detection metrics (see docs/metrics.md).

Image level: I-AUROC, I-AP, I-F1max. Pixel level: P-AUROC, P-AP, P-F1max, AU-PRO (FPR 0.3).
At a fixed threshold: false-alarm and miss rates, precision, recall, F1 (`decisions`); at the
pixel threshold: SegF1 and the predicted-to-true defect area ratio (`segmentation`).
Image-score ROC and precision-recall curves, and a threshold's point on them (`curves`).
"""

from .accumulator import DEFAULT_BINS, METRIC_NAMES, THRESHOLD_NAMES, MetricAccumulator
from .curves import Curves, OperatingPoint, image_curves, operating_point
from .decisions import DECISION_NAMES, decision_metrics, mean_decisions
from .functional import F1Max, au_pro, auroc, average_precision, f1_max
from .ranks import RankTable, table_from_scores
from .segmentation import SEGMENTATION_NAMES, SegmentationCounter

__all__ = [
    "Curves",
    "OperatingPoint",
    "image_curves",
    "operating_point",
    "DECISION_NAMES",
    "decision_metrics",
    "mean_decisions",
    "DEFAULT_BINS",
    "METRIC_NAMES",
    "THRESHOLD_NAMES",
    "F1Max",
    "MetricAccumulator",
    "RankTable",
    "SEGMENTATION_NAMES",
    "SegmentationCounter",
    "au_pro",
    "auroc",
    "average_precision",
    "f1_max",
    "table_from_scores",
]
