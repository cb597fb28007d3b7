"""ONNX graph -> OpenVINO IR: fp32, fp16 weights, or int8 by NNCF post-training quantisation.

int8 is calibrated on NORMAL training images only (the deployment never sees labels), and the
map tail after the reconstruction (upsampling, smoothing, the max) stays in float: quantising a
map that is compared against a threshold would move decisions for no speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refad.errors import ConfigError, RefadError

_TRANSFORMER_METHODS = frozenset({"rlr", "uniad"})


def _import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("format: openvino is not installed (pip install openvino)") from None
    return ov


def _quantise(model, method: str, batches: Sequence[np.ndarray]):
    try:
        import nncf
    except ImportError:
        raise ConfigError("precision: int8 needs nncf (pip install nncf)") from None
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    dataset = nncf.Dataset(list(batches), lambda batch: {"image": batch})
    kind = nncf.ModelType.TRANSFORMER if method in _TRANSFORMER_METHODS else None
    try:
        return nncf.quantize(
            model, dataset, subset_size=len(batches), model_type=kind,
            preset=nncf.QuantizationPreset.MIXED,
        )
    except Exception as exc:  # nncf raises many types
        text = " ".join(str(exc).split())[:200]
        name = type(exc).__name__
        raise RefadError(f"export: int8 quantisation failed ({name}: {text})") from None


def onnx_to_openvino(
    onnx_path: Path,
    xml_path: Path,
    precision: str,
    method: str,
    calibration: Sequence[np.ndarray] | None = None,
) -> list[Path]:
    """Convert and save the IR; returns the written files (.xml, .bin)."""
    ov = _import_openvino()
    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        if not calibration:
            raise ConfigError("calibration_images: int8 needs normal images to calibrate on")
        model = _quantise(model, method, calibration)
    ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return [xml_path, xml_path.with_suffix(".bin")]
