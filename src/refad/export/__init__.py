"""refad.export: trained models -> ONNX / OpenVINO graphs with metadata and a parity check.

Needs torch (it traces the PyTorch model); the exported folder is run by `refad.deploy`, which
does not.
"""

from refad.export.exporter import export_model
from refad.export.from_run import export_run
from refad.export.graph import ScoringGraph, export_attention, export_onnx
from refad.export.parity import TOLERANCES

__all__ = [
    "TOLERANCES", "ScoringGraph", "export_attention", "export_model", "export_onnx", "export_run",
]
