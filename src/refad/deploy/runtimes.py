"""Graph runners: onnxruntime or OpenVINO, imported only when a session is opened.

Both take a (B, 3, S, S) float32 batch and return (maps (B, S, S), scores (B,)) as float32
numpy arrays, so the inferencer does not care which runtime ran the graph.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from refad.errors import CheckpointError, ConfigError

ONNXRUNTIME_SESSION_CONFIG = {"session.set_denormal_as_zero": "1"}
"""onnxruntime session entries every refad session uses, recorded in each export's metadata.
Masked softmaxes make denormal numbers, which run far slower unflushed (benchmarks/deploy.md);
the weights flushed to zero are below 1e-38, so no figure changes (refad.export.graph)."""

RUNTIMES = ("onnxruntime", "openvino")
OV_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's CPU plugin runs in bf16 on CPUs with AMX unless told otherwise; the export's
precision, not the CPU model, decides the arithmetic (int8 keeps f32 outside quantised ops;
bf16 and f16 fall back to f32 on a CPU without them)."""
CPU_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}


class Runner(Protocol):
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _missing(package: str) -> ConfigError:
    return ConfigError(f"runtime: {package} is not installed (pip install {package})")


class OrtRunner:
    """onnxruntime session; `device` "cpu" or "cuda" (the CUDA execution provider).

    The session is opened and run on a thread of its own. onnxruntime flushes denormals
    (ONNXRUNTIME_SESSION_CONFIG) by switching the floating-point mode of the thread that opens
    the session, and that thread also computes during each run; on the caller's thread, that
    switch would silently change every later float computation of the caller's program.
    """

    def __init__(self, graph: Path, device: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime") from None
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device in ("cuda", "gpu"):
            if "CUDAExecutionProvider" not in available:
                raise ConfigError(
                    f"device: onnxruntime has no CUDA execution provider here "
                    f"(available: {', '.join(available)})"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ConfigError(f"device: {device!r} is not one of cpu, cuda for onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        for key, value in ONNXRUNTIME_SESSION_CONFIG.items():
            opts.add_session_config_entry(key, value)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refad-onnxruntime")
        try:
            self.session = self._thread.submit(
                ort.InferenceSession, os.fspath(graph), opts, providers=providers
            ).result()
        except Exception as exc:  # onnxruntime raises its own exception types
            self._thread.shutdown(wait=False)
            text = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{graph}: onnxruntime cannot load the graph ({text})") from None
        self.providers = self.session.get_providers()
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(["anomaly_map", "score"], {"image": batch})

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self._thread.submit(self._run, batch).result()
        return np.asarray(maps, dtype=np.float32), np.asarray(scores, dtype=np.float32)


class OpenVinoRunner:
    """OpenVINO compiled model (reads IR .xml or .onnx); `device` "cpu" or "gpu"."""

    def __init__(
        self,
        graph: Path,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino") from None
        core = ov.Core()
        target = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU"}.get(device)
        if target is None:
            raise ConfigError(f"device: {device!r} is not one of cpu, gpu for openvino")
        if target not in core.available_devices:
            raise ConfigError(
                f"device: OpenVINO sees no {target} here "
                f"(available: {', '.join(core.available_devices)})"
            )
        config: dict[str, object] = {}
        if target == "CPU":
            hint = OV_PRECISION_HINT[precision]
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if hint in CPU_CAPABILITY and CPU_CAPABILITY[hint] not in caps:
                hint = "f32"  # no native f16/bf16 arithmetic here: f32 compute
            config["INFERENCE_PRECISION_HINT"] = hint
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
        self.inference_precision = config.get("INFERENCE_PRECISION_HINT")
        try:
            model = core.read_model(os.fspath(graph))
            self.compiled = core.compile_model(model, target, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            text = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{graph}: OpenVINO cannot load the graph ({text})") from None
        self.request = self.compiled.create_infer_request()
        self.input_shapes = {
            i.get_any_name(): [d.get_length() if d.is_static else None
                               for d in i.get_partial_shape()]
            for i in self.compiled.inputs
        }
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({"image": batch})
        maps = result[self.compiled.output("anomaly_map")]
        scores = result[self.compiled.output("score")]
        return np.array(maps, dtype=np.float32), np.array(scores, dtype=np.float32)


def open_runner(
    runtime: str, graph: Path, device: str, threads: int | None, precision: str
) -> OrtRunner | OpenVinoRunner:
    """The runner for `runtime` ("onnxruntime" or "openvino")."""
    if runtime == "onnxruntime":
        if graph.suffix != ".onnx":
            raise ConfigError(
                f"runtime: onnxruntime cannot run {graph.name} (an OpenVINO IR); "
                "use runtime='openvino'"
            )
        return OrtRunner(graph, device, threads)
    if runtime == "openvino":
        return OpenVinoRunner(graph, device, threads, precision)
    raise ConfigError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
