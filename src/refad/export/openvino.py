"""ONNX graph -> OpenVINO IR: fp32, fp16 weights, bf16 compute, or int8 by NNCF post-training
quantisation.

bf16: the fp32 IR, run with OpenVINO's bf16 inference precision (AMX / AVX512-BF16 CPUs; f32
elsewhere). int8 is calibrated on NORMAL training images only (the deployment never sees
labels) and quantises the reconstruction network only: the backbone and the map tail after the
reconstruction (the feature error, upsampling, smoothing, the max) stay in float. The anomaly
map is a small difference between backbone features and their reconstruction; int8 noise on the
features themselves moved image scores by up to 65% of their value on realmix (Lite2 RLR), while
quantising only the reconstruction keeps them within 0.1%.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refad.config.methods import method_entry
from refad.errors import ConfigError, RefadError

FLOAT_NODES = (
    r"^/extractor/.*",  # the backbone: `ScoringGraph.extractor`
    r"^/[A-Za-z]+(_\d+)?$",  # ops of `ScoringGraph.forward` itself: the feature error and map tail
)
"""ONNX node-name patterns int8 leaves in float. Names follow the module path of the traced
`refad.export.graph.ScoringGraph`: the backbone under `/extractor/`, the reconstruction network
under its own module names (`/levels.0/...` for RLR), the ops of the graph's forward at the top."""


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
    # the method says whether it is a transformer (its registry entry, `quantise_as`)
    transformer = method_entry(method).quantise_as == "transformer"
    kind = nncf.ModelType.TRANSFORMER if transformer else None
    float_parts = nncf.IgnoredScope(patterns=list(FLOAT_NODES), validate=False)
    try:
        return nncf.quantize(
            model, dataset, subset_size=len(batches), model_type=kind,
            preset=nncf.QuantizationPreset.MIXED, ignored_scope=float_parts,
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
    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")  # bf16: f32 IR
    except RuntimeError as exc:  # OpenVINO's C++ streams report a failed write as no errno
        raise _write_failure(exc, xml_path, onnx_path.stat().st_size) from None
    return [xml_path, xml_path.with_suffix(".bin")]


def _free_bytes(folder: Path) -> int:
    """Room left where the IR goes (a function of its own, so a test can fill the disk)."""
    return shutil.disk_usage(folder).free


def _write_failure(exc: RuntimeError, xml_path: Path, needed: int) -> OSError:
    """The OSError a failed save stands for. A full disk reaches Python as
    `RuntimeError: basic_ios::clear: iostream error` (seen on a full tmpfs), which ended the
    export with a traceback: it is called a full disk when less room is left than the graph
    needs (the IR is about the size of its ONNX file), else OpenVINO's words are kept."""
    if _free_bytes(xml_path.parent) < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(xml_path))
    return OSError(errno.EIO, f"OpenVINO could not save it: {' '.join(str(exc).split())[:200]}",
                   str(xml_path))
