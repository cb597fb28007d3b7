"""`export_model`: a run's models -> a self-checked, self-describing deploy folder.

Nothing is written at `out_dir` until every graph has passed its parity check: the folder is
assembled under a temporary name beside it and renamed into place, so a refused export leaves
no half-written folder that an edge box could pick up.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import refad
from refad.atomic import atomic_folder, ensure_dir, json_safe, read_json
from refad.backbones import Backbone
from refad.deploy.images import check_rgb_array, preprocess_batch
from refad.deploy.metadata import (
    FORMAT,
    FORMAT_VERSION,
    FORMATS,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAMES,
    PRECISIONS,
    dumps,
    file_sha256,
    seal,
)
from refad.deploy.runtimes import ONNXRUNTIME_SESSION_CONFIG, open_runner
from refad.errors import ConfigError, RefadError
from refad.export.graph import OPSET, ScoringGraph, export_onnx
from refad.export.openvino import onnx_to_openvino
from refad.export.parity import TOLERANCES, compare, finite_json, map_span, passes, worst
from refad.models.base import AnomalyModel
from refad.pipeline.preprocess import check_rule, rule_text, size_value
from refad.pipeline.tiled import Tiling
from refad.runs.layout import UNIFIED, is_run_folder
from refad.runs.recorded import check_calibration, check_categories

ImagesArg = Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]]
_CALIB_KEYS = ("threshold", "pixel_threshold", "map_floor", "map_ceiling")


def _state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names and raw bytes, sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _json_value(value: Any) -> Any:
    """Strict-JSON copy of a caller's record; objects JSON cannot hold become their text."""
    return json_safe(value, other=str)


def _unit_calibration(unit: str, calib: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """(unit-level values, per-category values) from a run's calibration record."""
    if not calib:
        raise ConfigError(f"calibration.{unit}: missing (map_floor and map_ceiling are needed)")
    base = {k: _json_value(v) for k, v in calib.items() if k != "categories"}
    for key in ("map_floor", "map_ceiling"):
        if not isinstance(base.get(key), (int, float)):
            raise ConfigError(f"calibration.{unit}.{key}: missing or not a finite number")
    cats = {}
    for cat, values in (calib.get("categories") or {}).items():
        cats[str(cat)] = {k: _json_value(values.get(k)) for k in _CALIB_KEYS if k in values}
    # what every reader refuses (refad.runs.recorded) is never written: a threshold of 0
    # called every image anomalous, a category without one fell back to the global one
    check_calibration(base, f"calibration.{unit}")
    check_categories(cats, f"calibration.{unit}.categories", base)
    return base, cats


def _images_for(images: ImagesArg | None, unit: str, what: str) -> list[np.ndarray]:
    if images is None:
        return []
    chosen = images.get(unit, []) if isinstance(images, Mapping) else images
    return [check_rgb_array(im, f"{what}[{i}]") for i, im in enumerate(chosen)]


def graph_stems(units: list[str]) -> dict[str, str]:
    """The file name (without suffix) of each unit's graph. A category may be named anything
    a folder can ('metal nut', 'Größe'): such a name became a refusal of the whole export. Names
    of letters, digits and '_.-' stay as they are; others get `unit-N` (metadata keeps the
    category's real name beside its graph file)."""
    stems: dict[str, str] = {}
    taken: set[str] = set()  # compared without case: the folder may go to a Windows box
    for index, unit in enumerate(units):
        plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", unit) and not unit.startswith("unit-")
        stems[unit] = unit if plain and unit.lower() not in taken else f"unit-{index}"
        taken.add(stems[unit].lower())
    return stems


def _check_inputs(
    extractor: Backbone, models: Mapping[str, AnomalyModel], fmt: str,
    precision: str,
) -> tuple[str, tuple[int, int]]:
    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if fmt == "onnx" and precision != "fp32":
        raise ConfigError(f"precision: {precision} needs --format openvino (ONNX export is fp32)")
    if not models:
        raise ConfigError("models: nothing to export")
    if UNIFIED in models and len(models) > 1:
        raise ConfigError("models: a unified run has exactly one unit, 'unified'")
    methods = {m.method for m in models.values()}
    sizes = {m.spec.image_size for m in models.values()}
    if len(methods) != 1 or len(sizes) != 1:
        raise ConfigError("models: every unit of a run must share method and image size")
    for unit, model in models.items():
        if tuple(model.spec.levels) != tuple(extractor.levels):
            raise ConfigError(
                f"models.{unit}: trained on levels {list(model.spec.levels)}, the backbone "
                f"gives {list(extractor.levels)}"
            )
    return methods.pop(), sizes.pop()


def _foreign_entries(out_dir: Path, held: list[str]) -> list[str] | None:
    """What in a non-empty `out_dir` an earlier export did not write: None when it is not an
    export at all (no readable refad-deploy.json), else the names its metadata does not list
    (a user's notes added beside the graphs would be deleted with them)."""
    try:
        meta = read_json(out_dir / METADATA_FILE)
        units = meta["units"] if isinstance(meta, dict) and meta.get("format") == FORMAT else None
        ours = {METADATA_FILE, *(name for unit in units.values() for name in unit["files"])}
    except (RefadError, KeyError, TypeError, AttributeError):
        return None
    return [name for name in held
            if name not in ours or not (out_dir / name).is_file() or (out_dir / name).is_symlink()]


def check_destination(out_dir: Path, overwrite: bool, run_dir: Path | str | None = None) -> None:
    """Refuse, before any work and again before an old export is replaced, a destination the
    export must not write or replace. `--overwrite` deleted whatever `--out` held: the run
    folder itself, or a parent holding runs and data. So `--out` may not be, hold or lie inside
    a run folder (`run_dir` or any other), and a non-empty folder is replaced only when it is
    an earlier export (its refad-deploy.json lists every file there) and `overwrite` is given;
    also refused: a file, and a parent this process cannot write into."""
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    if run_dir is not None:
        run = Path(run_dir).resolve()
        if target == run:
            raise ConfigError(f"{out_dir}: is the run folder being exported; an export never "
                              "writes into its run folder (choose another --out)")
        if target in run.parents:
            raise ConfigError(f"{out_dir}: holds the run folder {run_dir}; an export never "
                              "writes above its run folder (choose another --out)")
        if run in target.parents:
            raise ConfigError(f"{out_dir}: lies inside the run folder {run_dir}; an export "
                              "never writes into a run folder (choose another --out)")
    for folder in (target, *target.parents):
        if is_run_folder(folder):
            where = ("is a run folder" if folder == target
                     else f"lies inside the run folder {folder}")
            raise ConfigError(f"{out_dir}: {where}; an export never writes into a run folder "
                              "(choose another --out)")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"{out_dir}: exists and is not a folder")
        held = sorted(p.name for p in out_dir.iterdir())
        if held:
            foreign = _foreign_entries(out_dir, held)
            if foreign is None:
                raise ConfigError(
                    f"{out_dir}: folder is not empty (holds {held[0]!r}"
                    f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}) and was not "
                    "written by refad export; --overwrite replaces only an earlier export "
                    "(choose another --out)"
                )
            if foreign:
                raise ConfigError(
                    f"{out_dir}: an earlier export, but {foreign[0]!r} is not one of its files; "
                    "--overwrite would delete it (move it out, or choose another --out)"
                )
            if not overwrite:
                raise ConfigError(f"{out_dir}: folder exists and is not empty (an earlier "
                                  "export; --overwrite replaces it)")
    ensure_dir(out_dir.parent)


@contextlib.contextmanager
def _named_in(out_dir: Path, shown: str, also: Sequence[str] = ()) -> Iterator[None]:
    """A failed write (a full disk) while a file is built in the hidden temporary folder names
    the file as the user will find it, `OUT/<shown>`: the temporary's name means nothing to
    them, and an OpenVINO export never holds the .onnx it is converted from. A file named
    `also` (an IR's .bin) keeps its own name."""
    try:
        yield
    except OSError as exc:
        named = Path(str(exc.filename)).name if exc.filename else ""
        where = out_dir / (named if named in also else shown)
        raise RefadError(f"{where}: cannot write ({exc.strerror or exc})") from None


def _backbone_info(extractor: Backbone) -> dict[str, Any]:
    wid = str(extractor.weights_id)
    is_hash = re.fullmatch(r"[0-9a-f]{64}", wid) is not None
    return {
        "name": extractor.name,
        "levels": list(extractor.levels),
        "aggregate_kernel": int(extractor.aggregate_kernel),
        "weights_id": wid,
        "weights_sha256": wid if is_hash else _state_sha256(extractor),
        "weights_sha256_of": "weights file" if is_hash else "state_dict bytes",
    }


def _reference(graph: ScoringGraph, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        maps, scores = graph(torch.from_numpy(batch))
    return maps.float().numpy(), scores.float().numpy()


def _self_check(
    graph: ScoringGraph, runner: Any, batch: np.ndarray, thresholds: list[float], limits: dict
) -> dict[str, Any]:
    ref_maps, ref_scores = _reference(graph, batch)
    span = map_span(ref_maps)  # one yardstick for both runs: the maps of all check images
    figs = [compare(ref_maps, ref_scores, *runner(batch), thresholds, span)]
    figs.append(compare(ref_maps[:1], ref_scores[:1], *runner(batch[:1]), thresholds, span))
    fig = worst(figs)
    fig.update(images=int(batch.shape[0]), batch_sizes=[int(batch.shape[0]), 1],
               tolerance=limits)
    fig["passed"] = passes(fig, limits)
    return fig


def _refusal(unit: str, fig: dict[str, Any], precision: str, tol: dict) -> RefadError:
    return RefadError(
        f"export refused: unit {unit!r} {precision} graph differs from the PyTorch model "
        f"(map max diff {fig['map_max_rel']:.3g} of range, limit {tol['map_rel']}; mean "
        f"{fig['map_mean_rel']:.3g}, limit {tol['map_mean_rel']:g}; score max rel diff "
        f"{fig['score_max_rel']:.3g}, limit {tol['score_rel']:g}; decision flips "
        f"{fig.get('decision_flips')}); nothing written"
    )


def export_model(
    extractor: Backbone,
    models: Mapping[str, AnomalyModel],
    calibration: Mapping[str, Mapping[str, Any]],
    run_info: Mapping[str, Any],
    out_dir: str | Path,
    format: str = "onnx",  # noqa: A002 (the CLI's --format)
    precision: str = "fp32",
    calibration_images: ImagesArg | None = None,
    check_images: ImagesArg | None = None,
    *,
    exporter: str = "auto",
    overwrite: bool = False,
    tolerance: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    resize: str = "stretch",
    tiling: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Export every unit's extractor + model to one graph each and write the metadata.

    `models`: {"unified": model} or {category: model}. `calibration`: per unit, the run's
    record (threshold, map_floor, map_ceiling, optional pixel_threshold and "categories").
    `check_images` / `calibration_images`: NORMAL (H, W, 3) uint8 images, one list for all
    units or a {unit: list} mapping; the check needs at least one per unit, int8 needs the
    calibration ones. `tolerance` overrides entries of the precision's parity limits
    (`parity.TOLERANCES`). `run_dir`: the run the models come from, never written into or
    above (`check_destination`). `resize`: the run's resize rule (`refad.pipeline.preprocess`),
    written into the metadata for every runtime to apply; `tiling`: the run's `data.tiling`
    record (None: off), written there too. Returns the metadata written to
    `out_dir`/refad-deploy.json.
    """
    method, size = _check_inputs(extractor, models, format, precision)
    check_rule(resize, "data.resize")
    limits = {**TOLERANCES[precision], **(tolerance or {})}
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite, run_dir)
    plan = {}
    for unit in models:
        check = _images_for(check_images, unit, "check_images")
        if not check:
            raise ConfigError(f"check_images: no normal images to check unit {unit!r} with")
        calib = _images_for(calibration_images, unit, "calibration_images")
        if precision == "int8" and not calib:
            raise ConfigError(f"calibration_images: int8 needs normal images for unit {unit!r}")
        plan[unit] = (check, calib, *_unit_calibration(unit, calibration.get(unit)))
    backbone = copy.deepcopy(extractor).cpu().float().eval()
    backbone.use_input_size(size)  # before tracing: the graph holds a ViT's table as a constant
    with atomic_folder(out_dir, replace=overwrite) as tmp:
        units = {}
        exporters = set()
        runtime = "onnxruntime" if format == "onnx" else "openvino"
        stems = graph_stems(list(models))
        for unit, model in models.items():
            check, calib_imgs, base, cats = plan[unit]
            graph = ScoringGraph(backbone, copy.deepcopy(model).cpu().float().eval()).eval()
            onnx_path = tmp / f"{stems[unit]}.onnx"
            graph_file = onnx_path.name if format == "onnx" else f"{stems[unit]}.xml"
            with _named_in(out_dir, graph_file, [f"{stems[unit]}.bin"]):
                exporters.add(export_onnx(graph, size, onnx_path, exporter))
                files = [onnx_path]
                if format == "openvino":
                    batches = [preprocess_batch([im], size, extractor.mean, extractor.std,
                                                resize) for im in calib_imgs]
                    files = onnx_to_openvino(onnx_path, tmp / graph_file, precision, method,
                                             batches)
                    onnx_path.unlink()
            runner = open_runner(runtime, files[0], "cpu", None, precision)
            thresholds = [base["threshold"]] if base.get("threshold") is not None else []
            thresholds += [v["threshold"] for v in cats.values() if v.get("threshold") is not None]
            batch = preprocess_batch(check, size, extractor.mean, extractor.std, resize)
            fig = _self_check(graph, runner, batch, thresholds, limits)
            fig["runtime"] = runtime
            if not fig["passed"]:
                raise _refusal(unit, fig, precision, limits)
            units[unit] = {
                "graph": files[0].name,
                "files": {f.name: file_sha256(f) for f in files},
                "model_sha256": _state_sha256(model),
                "calibration": base,
                "categories": cats,
                "parity": finite_json(fig),
            }
        meta = seal({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "refad_version": refad.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "method": method,
            "mode": "unified" if UNIFIED in models else "per-category",
            "backbone": _backbone_info(extractor),
            "run": _json_value(dict(run_info)),
            "input": {
                "name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                "size": size_value(size),  # an integer: square; else [height, width]
                "channels": "RGB", "mean": [float(v) for v in extractor.mean],
                "std": [float(v) for v in extractor.std], "resize": rule_text(resize, size),
                # the rule by name where it is not the default "stretch" (so the metadata of
                # a stretched export stays as it was written before rules existed)
                **({} if resize == "stretch" else {"resize_mode": resize}),
                # scored by overlapping tiles of `size` (refad.pipeline.tiled), where the run was
                **({} if tiling is None else {"tiling": Tiling.of(tiling).to_record()}),
                "batch": "dynamic",
            },
            "outputs": {
                OUTPUT_NAMES[0]: {"shape": ["batch", *size], "dtype": "float32",
                                  "meaning": "per-pixel anomaly (reconstruction error) at the "
                                  "input size; higher is more anomalous"},
                OUTPUT_NAMES[1]: {"shape": ["batch"], "dtype": "float32",
                                  "meaning": "image anomaly score, compared with the threshold"},
            },
            "graph": {
                "format": format, "precision": precision, "opset": OPSET,
                "exporter": "+".join(sorted(exporters)),
                "attention": "matmul-add mask-softmax-matmul (fused by OpenVINO)",
                "onnxruntime_session_config": ONNXRUNTIME_SESSION_CONFIG,
                "torch_version": torch.__version__,
            },
            "decision": {"anomalous": "score > threshold", "normalised_score": "score / threshold",
                         "mask": "anomaly_map > pixel_threshold (else map_ceiling)"},
            "units": units,
        })
        with _named_in(out_dir, METADATA_FILE):
            (tmp / METADATA_FILE).write_text(dumps(meta), encoding="utf-8")
        if overwrite:  # again: what is about to be deleted may have changed meanwhile
            check_destination(out_dir, overwrite, run_dir)
    return meta
