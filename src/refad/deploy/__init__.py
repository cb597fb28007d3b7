"""refad.deploy: run exported graphs (ONNX / OpenVINO IR) without torch.

    from refad.deploy import Inferencer
    inf = Inferencer("deploy/rlr-onnx", runtime="onnxruntime", device="cpu")
    r = inf.predict("part.png", category="pcb")
    r.score, r.threshold, r.anomalous, r.anomaly_map, r.mask, r.regions, r.heatmap

Imports numpy and PIL only; onnxruntime / OpenVINO load when a graph is first run, matplotlib
when a heatmap is first asked for, scipy when defect regions are. Nothing here imports torch
(a test enforces it).
"""

from refad.deploy.defects import DefectRegion, defect_mask, defect_regions, pixel_threshold
from refad.deploy.images import RESIZE_RULE, load_rgb, preprocess, preprocess_batch, read_rgb
from refad.deploy.inferencer import Inferencer, Prediction
from refad.deploy.metadata import METADATA_FILE, read_metadata

__all__ = [
    "DefectRegion",
    "defect_mask",
    "defect_regions",
    "pixel_threshold",
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
