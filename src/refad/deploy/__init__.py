"""refad.deploy: run exported graphs (ONNX / OpenVINO IR) without torch.

    from refad.deploy import Inferencer
    inf = Inferencer("deploy/rlr-onnx", runtime="onnxruntime", device="cpu")
    r = inf.predict("part.png", category="pcb")
    r.score, r.threshold, r.anomalous, r.anomaly_map, r.mask, r.regions, r.heatmap

Imports numpy and PIL only; onnxruntime / OpenVINO load when a graph is first run, matplotlib
when a heatmap is first asked for, scipy when defect regions are. Nothing here imports torch
(a test enforces it). `Prediction`, `Calibration` and the defect regions are refad's own, from
`refad.pipeline`: an export's result is the same type as `refad predict`'s and the server's.
"""

from refad.deploy.images import RESIZE_RULE, load_rgb, preprocess, preprocess_batch, read_rgb
from refad.deploy.inferencer import Inferencer
from refad.deploy.metadata import METADATA_FILE, read_metadata
from refad.pipeline.calibration import Calibration, Thresholds
from refad.pipeline.defects import DefectRegion, defect_mask, defect_regions
from refad.pipeline.postprocess import Prediction

__all__ = [
    "DefectRegion",
    "defect_mask",
    "defect_regions",
    "Calibration",
    "Thresholds",
    "METADATA_FILE",
    "RESIZE_RULE",
    "Inferencer",
    "Prediction",
    "load_rgb",
    "preprocess",
    "preprocess_batch",
    "read_metadata",
    "read_rgb",
]
