"""`refad export`: a run folder -> an exported folder, with the run's own normal images for
the parity check and (int8) the quantisation calibration. Never test images."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

import refad
from refad.data import load_split, read_image_rgb
from refad.errors import DataError
from refad.export.exporter import check_destination, export_model
from refad.pipeline.tiled import Tiling, scaled_image
from refad.pipeline.tiling import TileGrid, cut_tiles
from refad.runs import open_run


def _normal_images(run: Any, count: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Up to `count` normal training images per unit, drawn reproducibly; with tiling, the
    middle tile of each (what the graph is given), else the images themselves."""
    samples = [s for s in load_split(run.config.data, "train") if s.label == 0]
    if not samples:
        raise DataError(f"{run.path}: the run's training images are not there to check against")
    per_unit: dict[str, list] = {}
    for s in samples:
        per_unit.setdefault(run.unit_for(s.category), []).append(s)
    rng = random.Random(seed)
    tiling = Tiling.of(run.config.data.tiling)
    return {
        unit: [_as_graph_input(read_image_rgb(s.image), tiling, run.config.data.hw)
               for s in rng.sample(group, min(count, len(group)))]
        for unit, group in per_unit.items()
    }


def _as_graph_input(rgb: np.ndarray, tiling: Tiling | None, tile_hw: tuple[int, int]
                    ) -> np.ndarray:
    """An image as the parity check gives it: itself, or its middle tile under tiling."""
    if tiling is None:
        return rgb
    grid = tiling.grid(rgb.shape, tile_hw)
    middle = TileGrid(grid.image_hw, grid.tile_hw, (grid.origins[len(grid) // 2],))
    return np.ascontiguousarray(next(cut_tiles(scaled_image(rgb, tiling), middle)))


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    format: str = "onnx",  # noqa: A002 (the CLI's --format)
    precision: str = "fp32",
    check_count: int = 8,
    calibration_count: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export every unit of a run (CPU, float32 reference) and return the metadata written.
    `overwrite` replaces an earlier export at `out_dir` (atomically, once the new export is
    checked); `out_dir` is never the run folder, inside it or above it."""
    check_destination(Path(out_dir), overwrite, run_dir)
    run = open_run(run_dir, "cpu")
    models = {unit: run.model(unit)[0] for unit in run.units}
    tiling = Tiling.of(run.config.data.tiling)
    calibration = {unit: run.model(unit)[1].calibration or {} for unit in run.units}
    images = _normal_images(run, check_count + calibration_count, seed)
    check = {u: imgs[:check_count] for u, imgs in images.items() if u in models}
    # int8 is checked on images it was not calibrated on (the same ones made its parity look
    # better than on new images); a unit with too few normal images reuses them
    calib = {u: imgs[check_count:] or imgs for u, imgs in images.items() if u in models}
    info = {
        "run": Path(run_dir).name, "refad_version": refad.__version__,
        "method": run.config.method, "mode": run.config.train.mode,
    }
    return export_model(
        run.extractor, models, calibration, info, out_dir, format, precision,
        calibration_images=calib if precision == "int8" else None, check_images=check,
        overwrite=overwrite, run_dir=run_dir, resize=run.config.data.resize,
        tiling=None if tiling is None else tiling.to_record(),
    )
