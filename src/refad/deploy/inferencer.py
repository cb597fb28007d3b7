"""Scoring images with an exported folder, without torch: `Inferencer`.

The threshold is, in order: the ``threshold=`` passed to the call ("override"), the category's
own calibrated threshold ("category:<name>"), the unit's global one ("global"); with none there
is no decision (``anomalous`` is None). Everything after the graph is refad's one result step
(`refad.pipeline.postprocess`, the same for `refad predict` and the server):
``anomalous = score > threshold``, ``normalised_score = score / threshold``, a non-finite score
or map gives ``finite`` False and no decision, and the defect mask marks pixels of the map (at
the original image size) above the pixel threshold (the calibration's ``pixel_threshold`` when
the run has one, else ``map_ceiling``: "worse than any normal pixel seen").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refad.deploy.images import ImageInput, load_rgb, preprocess_batch
from refad.deploy.metadata import METADATA_FILE, read_metadata, unit_calibration, verify_files
from refad.deploy.runtimes import RUNTIMES, open_runner
from refad.errors import CheckpointError, ConfigError, DataError, require_at_least_one
from refad.pipeline.calibration import Calibration, Thresholds
from refad.pipeline.postprocess import Prediction, postprocess
from refad.pipeline.preprocess import as_hw, content_maps
from refad.pipeline.tiled import TILE_BATCH, Tiling, score_tiled
from refad.runs.layout import UNIFIED

__all__ = ["Inferencer", "Prediction"]


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class Inferencer:
    """Run an export folder made by `refad export` with onnxruntime or OpenVINO.

    ``runtime``: "onnxruntime" or "openvino"; None picks by the export's graph format.
    ``device``: "cpu" (or "auto", which means it here), or "cuda"/"gpu" for the runtime's GPU
    backend where installed.
    ``threads``: CPU threads of the runtime (None: its default). Graph files are checked
    against their recorded sha256 when the folder is opened; sessions open on first use.
    """

    def __init__(
        self,
        path: str | Path,
        runtime: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if not isinstance(path, (str, Path)):
            raise ConfigError(f"path: expected an export folder's path, got {type(path).__name__}")
        if threads is not None and (not _is_int(threads) or threads < 1):
            raise ConfigError(f"threads: must be a whole number of at least 1, got {threads!r}")
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        if runtime is None:  # the export's graph format decides
            runtime = "openvino" if self.meta["graph"]["format"] == "openvino" else "onnxruntime"
        if device == "auto":  # as every command's default means: here, the CPU
            device = "cpu"
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.meta["graph"]["format"] == "openvino" and runtime != "openvino":
            raise ConfigError(
                f"runtime: {self.path} holds OpenVINO IR graphs; use runtime='openvino'"
            )
        self.runtime, self.device, self.threads = runtime, device, threads
        self.size: int | list[int] = self.meta["input"]["size"]  # as stored: int = square
        self.hw: tuple[int, int] = as_hw(self.size, "input.size")  # (height, width)
        self.resize: str = self.meta["input"].get("resize_mode", "stretch")
        self.mean: list[float] = self.meta["input"]["mean"]
        self.std: list[float] = self.meta["input"]["std"]
        # None: each image resized to the input; else scored by tiles (refad.pipeline.tiled)
        self.tiling: Tiling | None = Tiling.of(self.meta["input"].get("tiling"))
        self.units: dict[str, dict[str, Any]] = self.meta["units"]
        for name, unit in self.units.items():
            verify_files(self.path, name, unit)
        self._runners: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def categories(self) -> list[str]:
        """Categories the export knows (their units, or those calibrated in a unified unit)."""
        if UNIFIED in self.units:
            return sorted(self.units[UNIFIED].get("categories", {}))
        return sorted(self.units)

    def _unit_for(self, category: str | None) -> str:
        if category is not None and not isinstance(category, str):
            raise ConfigError(f"category: expected a name, got {type(category).__name__}")
        if UNIFIED in self.units:
            known = self.units[UNIFIED].get("categories", {})
            if category is not None and known and category not in known:
                raise ConfigError(
                    f"category: {category!r} is not calibrated in this export "
                    f"(known: {', '.join(sorted(known))})"
                )
            return UNIFIED
        if category is None:
            if len(self.units) == 1:
                return next(iter(self.units))
            raise ConfigError(
                f"category: {self.path} holds one model per category; name one of "
                f"{', '.join(sorted(self.units))}"
            )
        if category not in self.units:
            raise ConfigError(
                f"category: {category!r} is not in this export "
                f"(categories: {', '.join(sorted(self.units))})"
            )
        return category

    def _runner(self, unit: str) -> Any:
        if unit not in self._runners:
            info = self.units[unit]
            runner = open_runner(
                self.runtime, self.path / info["graph"], self.device, self.threads,
                self.meta["graph"]["precision"],
            )
            shape = runner.input_shapes.get("image")
            want = [3, *self.hw]
            if shape is None or len(shape) != 4 or list(shape[1:]) != want:
                raise CheckpointError(
                    f"{self.path / info['graph']}: graph input {shape} does not take "
                    f"(B, 3, {self.hw[0]}, {self.hw[1]}) images as {METADATA_FILE} says"
                )
            if not {"anomaly_map", "score"} <= set(runner.output_names):
                raise CheckpointError(
                    f"{self.path / info['graph']}: graph lacks the anomaly_map/score outputs"
                )
            self._runners[unit] = runner
        return self._runners[unit]

    def scored_with(self, category: str | None = None) -> str:
        """What computes the scores of `category`, in words: the runtime, the export's
        precision, and the arithmetic this machine gives it (a bf16 export on a CPU without
        bf16 runs in f32, and its scores move by a few percent against a machine with it)."""
        runner = self._runner(self._unit_for(category))
        precision = self.meta["graph"]["precision"]
        compute = getattr(runner, "inference_precision", None) or "f32"
        return f"{self.runtime}, {precision} export, {compute} arithmetic on {self.device}"

    def run(self, batch: np.ndarray, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph call on a preprocessed (B, 3, H, W) float32 batch -> (maps, scores)."""
        want = (3, *self.hw)
        if not isinstance(batch, np.ndarray):
            raise DataError(f"batch: expected a numpy array, got {type(batch).__name__}")
        if (batch.dtype != np.float32 or batch.ndim != 4 or tuple(batch.shape[1:]) != want
                or batch.shape[0] == 0):
            raise DataError(
                f"batch: expected (B, 3, {self.hw[0]}, {self.hw[1]}) float32 with B >= 1, got "
                f"{tuple(batch.shape)} {batch.dtype}"
            )
        return self._runner(self._unit_for(category))(np.ascontiguousarray(batch))

    def calibration(self, category: str | None = None) -> Calibration:
        """The typed calibration of the unit that scores `category`."""
        unit = self._unit_for(category)
        return unit_calibration(unit, self.units[unit])

    def thresholds(self, category: str | None) -> Thresholds:
        """The thresholds and colouring range that decide images of `category` (None: the
        export's global ones), with `source` saying whose threshold decides (the rule every
        scoring path shares: `Calibration.for_category`)."""
        return self.calibration(category).for_category(category)

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        category: str | None = None,
        threshold: float | None = None,
    ) -> Prediction | list[Prediction]:
        """Score one image (path, PIL image or (H, W, 3) uint8 array) or a list of them."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, category, threshold)
        return self.predict_batch([image], category, threshold)[0]

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        category: str | None = None,
        threshold: float | None = None,
        batch_size: int = 8,
    ) -> list[Prediction]:
        """Score images in batches of `batch_size`; results keep the input order."""
        if threshold is not None and (isinstance(threshold, bool)
                                      or _finite_or_none(threshold) is None or threshold <= 0):
            # as the server and export metadata: scores are errors (>= 0), so a threshold at or
            # below 0 flags every image, and its normalised score has the wrong sign
            raise ConfigError(f"threshold: must be a finite number > 0, got {threshold!r}")
        _check_batch(images, batch_size)
        thresholds = self.thresholds(category)
        if threshold is not None:
            thresholds = thresholds.overridden(threshold, "override")
        return self.predict_at(images, thresholds, category, batch_size)

    def predict_at(
        self,
        images: Sequence[ImageInput],
        thresholds: Thresholds,
        category: str | None = None,
        batch_size: int = 8,
    ) -> list[Prediction]:
        """Score images of `category` and decide them at `thresholds`: the calibrated ones
        (`thresholds(category)`), or a caller's own (a server's request threshold)."""
        _check_batch(images, batch_size)
        unit = self._unit_for(category)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            rgbs = [load_rgb(im, _name(im, start + i)) for i, im in enumerate(chunk)]
            # tiles go TILE_BATCH or batch_size at a time (a server's request of one image
            # still scores its tiles in batches)
            maps, scores = self.score_images(rgbs, category, max(batch_size, TILE_BATCH))
            out.extend(postprocess(rgb, amap, float(score), thresholds, category, unit)
                       for rgb, amap, score in zip(rgbs, maps, scores, strict=True))
        return out

    def score_images(
        self, rgbs: Sequence[np.ndarray], category: str | None = None,
        batch_size: int = TILE_BATCH,
    ) -> tuple[list[np.ndarray], list[float]]:
        """(h, w, 3) uint8 images -> (maps, scores) by the export's input rule: each map at
        the input size cut to its picture, or with tiling stitched at the scaled image size
        from tiles run `batch_size` at a time (`refad.pipeline.tiled`, as the run does)."""
        runner = self._runner(self._unit_for(category))
        if self.tiling is not None:
            pairs = [score_tiled(rgb, self.tiling, self.hw, self.mean, self.std, runner,
                                 batch_size) for rgb in rgbs]
            return [m for m, _ in pairs], [s for _, s in pairs]
        maps, scores = runner(preprocess_batch(rgbs, self.hw, self.mean, self.std,
                                               self.resize))
        maps = content_maps(maps.astype(np.float32, copy=False), rgbs, self.hw, self.resize)
        return list(maps), [float(v) for v in scores]


def _check_batch(images: Any, batch_size: Any) -> None:
    if not _is_int(batch_size):
        raise ConfigError(f"batch_size: must be a whole number, got {batch_size!r}")
    require_at_least_one("batch_size", batch_size)
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        raise ConfigError(f"images: expected a list of images, got {type(images).__name__} "
                          "(predict() takes a single one)")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _name(image: Any, index: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"image[{index}]"
