"""A run folder: creating, resuming and opening it. The only code that reads or writes the
files inside one (their names are in `refad.runs.layout`)."""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refad.atomic import read_json, write_json, write_text_atomic
from refad.backbones import Backbone, build_extractor
from refad.config import RunConfig, load_config_file
from refad.device import resolve_device
from refad.errors import CheckpointError, ConfigError, DataError
from refad.models.base import AnomalyModel
from refad.pipeline.preprocess import as_hw, size_value
from refad.pipeline.tiled import Tiling
from refad.runs import checkpoint as ckpt
from refad.runs.file_schemas import EVALUATION_ID, METRICS, SCORE_ROW, check_file
from refad.runs.layout import (
    CATEGORIES_DIR,
    CONFIG_FILE,
    IMPORTED_FILE,
    META_FILE,
    METRICS_JSON,
    METRICS_MD,
    REPORT_HTML,
    TEST_SCORES_JSON,
    TRAINING_DATA_FILE,
    UNIFIED,
    unit_for_category,
    unit_path,
)
from refad.runs.lock import folder_lock


@dataclass(frozen=True)
class RunDir:
    """Paths and files of one run folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def exists(self) -> bool:
        return self.config_path.is_file()

    def unit_path(self, unit: str) -> Path:
        return unit_path(self.path, unit)

    def check_new(self, advice: str = "choose another --out") -> None:
        """Refuse a folder that already holds a run (it is never written over)."""
        if self.config_path.exists():
            raise ConfigError(f"{self.path}: already holds a run; {advice}")

    def create(self, config: RunConfig) -> RunConfig:
        """Start a new run here: refuses a folder that already holds one."""
        self.check_new("use --resume to continue it or choose another --out")
        self.write_config(config)
        return config

    def write_config(self, config: RunConfig) -> None:
        write_json(self.config_path, config.model_dump())

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path}: not a refad run folder (no {CONFIG_FILE})")
        return load_config_file(self.config_path)

    @property
    def is_imported(self) -> bool:
        """Written by `refad import-authors`: the authors' weights, no schedule of refad's."""
        return (self.path / IMPORTED_FILE).exists()

    def resume(self) -> RunConfig:
        """The saved config of a run to continue (it is authoritative over new flags)."""
        if not self.config_path.is_file():
            raise ConfigError(f"{self.path}: nothing to resume (no {CONFIG_FILE})")
        if self.is_imported:
            raise ConfigError(f"{self.path}: an imported checkpoint (the authors' code) carries "
                              "no optimiser state to continue from; train a new run instead")
        return load_config_file(self.config_path)

    def check_checkpoints(self, config: RunConfig, resuming: bool = False) -> None:
        """Cheap checks before any work: every unit's checkpoint must describe the model of
        config.json (an edited or foreign folder is refused with what differs). Resuming, a
        unit may still be untrained, but weights without their manifest are refused
        (retraining would delete them), and so is a model section changed since training."""
        units = self.units(config)
        if not units:
            raise CheckpointError(f"{self.path}: no trained model in this run folder")
        for unit in units:
            where = self.unit_path(unit)
            if resuming and not self.has_checkpoint(unit):
                orphans = ckpt.tensor_files(where)
                if orphans:
                    raise CheckpointError(
                        f"{where / META_FILE}: missing, but {orphans[0].name} is there; "
                        "refusing to train over those weights (restore checkpoint.json, or "
                        "train into another --out)"
                    )
                continue
            cross_check(config, self.read_meta(unit), where)

    def units(self, config: RunConfig) -> list[str]:
        """Trained units: `unified`, or the categories with a checkpoint folder."""
        if config.train.mode == "unified":
            return [UNIFIED]
        root = self.path / CATEGORIES_DIR
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def lock(self, purpose: str) -> contextlib.AbstractContextManager[None]:
        """The folder's writer lock (training, resuming, testing, importing)."""
        return folder_lock(self.path, f"use another folder than {self.path} to {purpose}")

    def remove_leftovers(self, config: RunConfig) -> list[Path]:
        """Drop what interrupted saves left behind (writers only, under the lock)."""
        removed = []
        for unit in self.units(config):
            if self.has_checkpoint(unit):
                removed += ckpt.remove_leftovers(self.unit_path(unit), self.read_meta(unit))
        return removed

    def discard_if_untrained(self, config: RunConfig) -> None:
        """A run that failed before its first checkpoint leaves no config.json behind, so
        the same command can simply be run again."""
        if not any(self.has_checkpoint(u) for u in self.units(config)):
            self.config_path.unlink(missing_ok=True)
            (self.path / TRAINING_DATA_FILE).unlink(missing_ok=True)

    def discard_unwritten_import(self) -> None:
        """Remove what an import wrote before it failed or was stopped (it checked that no run
        was here first): the manifest, its tensor files and imported.json."""
        if self.config_path.exists():
            return
        for path in [self.path / META_FILE, self.path / IMPORTED_FILE,
                     *ckpt.tensor_files(self.unit_path(UNIFIED))]:
            path.unlink(missing_ok=True)

    def record_training_data(self, fingerprint: str, images: int, resuming: bool) -> None:
        """A new run records the training images it starts from (their contents and order);
        a resume must find the same ones. The held-out split is drawn again from the folder
        listing on resume: with an image added or edited in between, images already trained
        on became 'held-out' calibration images, and the honest threshold was not."""
        path = self.path / TRAINING_DATA_FILE
        if not resuming:
            write_json(path, {"fingerprint": fingerprint, "images": images})
            return
        if not path.is_file():  # a run from before this record: nothing to compare with
            return
        saved = read_json(path, CheckpointError)
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            then = saved.get("images") if isinstance(saved, dict) else None
            raise DataError(
                f"{self.path}: its training images changed since the run began ({then} "
                f"images then, {images} now, or their contents); a resume would hold out and "
                "calibrate on other images, some already trained on; restore them, or train "
                "a new run")

    # checkpoints
    def has_checkpoint(self, unit: str) -> bool:
        return ckpt.has_checkpoint(self.unit_path(unit))

    def save_checkpoint(
        self,
        unit: str,
        model: AnomalyModel,
        meta: ckpt.CheckpointMeta,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        ckpt.save_checkpoint(self.unit_path(unit), model, meta, optimizer)

    def weights_path(self, unit: str = UNIFIED) -> Path:
        """The file holding a unit's current weights (named by the checkpoint manifest)."""
        return ckpt.tensor_path(self.unit_path(unit), self.read_meta(unit), "model")

    def read_meta(self, unit: str) -> ckpt.CheckpointMeta:
        return ckpt.read_meta(self.unit_path(unit))

    def load_model(
        self, unit: str, device: torch.device | str
    ) -> tuple[AnomalyModel, ckpt.CheckpointMeta]:
        return ckpt.load_model(self.unit_path(unit), device)

    def load_optimizer(
        self, unit: str, optimizer: torch.optim.Optimizer, meta: ckpt.CheckpointMeta
    ) -> None:
        ckpt.load_optimizer(self.unit_path(unit), optimizer, meta)

    # results
    def write_metrics(self, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
        """`metrics.json` (strict JSON) and `metrics.md`; the per-image rows of `result`
        (`images`) go to `test_scores.json`, the input of `refad report`."""
        images = result.get("images")
        summary = {k: v for k, v in result.items() if k != "images"}
        if images is not None:
            # the pair is written one file after the other: a full disk or a kill between
            # them must not leave one evaluation's scores beside another's metrics unseen
            summary[EVALUATION_ID] = secrets.token_hex(8)
            write_json(self.path / TEST_SCORES_JSON,
                       {EVALUATION_ID: summary[EVALUATION_ID], "images": images})
        write_json(self.path / METRICS_JSON, summary)
        write_text_atomic(self.path / METRICS_MD, markdown)
        return self.path / METRICS_JSON, self.path / METRICS_MD

    def read_evaluation(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics.json, the rows of test_scores.json) written by `refad test`."""
        if not self.config_path.is_file():  # a mistyped path is no run, not an untested one
            raise CheckpointError(f"{self.path}: not a refad run folder (no {CONFIG_FILE})")
        found = []
        for name in (METRICS_JSON, TEST_SCORES_JSON):
            path = self.path / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing; run `refad test --run {self.path}` first")
            found.append(read_json(path, CheckpointError))
        metrics, scores = found
        for name, ok in ((METRICS_JSON, isinstance(metrics, dict)),
                         (TEST_SCORES_JSON, isinstance(scores, dict)
                          and isinstance(scores.get("images"), list))):
            if not ok:
                raise CheckpointError(f"{self.path / name}: not written by refad test")
        check_file(METRICS, metrics, self.path / METRICS_JSON)
        ids = (metrics.get(EVALUATION_ID), scores.get(EVALUATION_ID))  # absent in older runs
        if None not in ids and ids[0] != ids[1]:
            raise CheckpointError(
                f"{self.path / TEST_SCORES_JSON}: not the one {METRICS_JSON} was written with "
                f"(an interrupted or failed `refad test`?); run `refad test --run {self.path}` "
                "again"
            )
        rows = [check_file(SCORE_ROW, row, self.path / TEST_SCORES_JSON, f"images[{i}]")
                for i, row in enumerate(scores["images"])]
        return metrics, [row.model_dump() for row in rows]

    def check_evaluated_models(
        self, metrics: dict[str, Any], metas: dict[str, ckpt.CheckpointMeta]
    ) -> None:
        """metrics.json of a model the run has trained past (tested, then resumed) beside a
        gallery and loss curve of the newer one would be one page about two models."""
        recorded = metrics.get("checkpoints") or {}  # absent in runs tested before it was kept
        for unit, meta in metas.items():
            if unit in recorded and recorded[unit] != ckpt.checkpoint_identity(meta):
                raise CheckpointError(
                    f"{self.path / METRICS_JSON}: computed on epoch {recorded[unit]['epoch']} "
                    f"of {unit!r}, whose checkpoint is now epoch {meta.epoch}; run `refad test "
                    f"--run {self.path}` again"
                )

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_HTML


@dataclass
class TrainedRun:
    """A run opened for scoring: config and backbone now, each unit's model on first use."""

    folder: RunDir
    config: RunConfig
    device: torch.device
    extractor: Backbone
    _models: dict[str, tuple[AnomalyModel, ckpt.CheckpointMeta]] = field(
        default_factory=dict
    )

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def units(self) -> list[str]:
        return self.folder.units(self.config)

    def unit_for(self, category: str) -> str:
        return unit_for_category(self.config.train.mode, category)

    def model(self, unit: str) -> tuple[AnomalyModel, ckpt.CheckpointMeta]:
        if unit not in self._models:
            units = self.units
            if units and unit not in units:  # said with the run's own models, not as a
                # missing checkpoint.json that sent users to train again
                raise ConfigError(f"{self.path}: no model {unit!r} in this run; its models: "
                                  f"{', '.join(units)}")
            cross_check(self.config, self.folder.read_meta(unit), self.folder.unit_path(unit))
            model, meta = self.folder.load_model(unit, self.device)
            if meta.backbone["weights_id"] != self.extractor.weights_id:
                raise CheckpointError(
                    f"{self.folder.unit_path(unit)}: trained with backbone weights "
                    f"{meta.backbone['weights_id']}, but {self.extractor.weights_id} are loaded"
                )
            self._models[unit] = (model, meta)
        return self._models[unit]


def cross_check(config: RunConfig, meta: ckpt.CheckpointMeta, where: Path) -> None:
    """config.json and the checkpoint must describe the same model: an edited or foreign
    file is refused with what differs, never scored with a mismatched backbone or method."""
    b = meta.backbone
    pairs = {
        "method": (config.method, meta.method),
        "backbone.name": (config.backbone.name, b.get("name")),
        "backbone.levels": (list(config.backbone.levels), list(b.get("levels", []))),
        "backbone.aggregate_kernel": (config.backbone.aggregate_kernel, b.get("aggregate_kernel")),
        "data.image_size": (size_value(config.data.hw),
                            size_value(as_hw(b.get("image_size", meta.spec["image_size"])))),
        "data.resize": (config.data.resize, b.get("resize", "stretch")),
        "backbone.kind": (config.backbone.kind, b.get("kind", "cnn")),
        "data.tiling": (_tiling_record(config), b.get("tiling")),
    }
    for field_name, (in_config, in_checkpoint) in pairs.items():
        if in_config != in_checkpoint:
            raise CheckpointError(
                f"{where}: {CONFIG_FILE} says {field_name} = {in_config!r}, the checkpoint was "
                f"trained with {in_checkpoint!r} (edited or foreign run folder)"
            )
    _check_model_config(config, meta, where)


def _tiling_record(config: RunConfig) -> dict[str, float] | None:
    """config.json's tiling as the checkpoint records it (None: off)."""
    tiling = config.data.tiling
    return None if tiling is None else Tiling.of(tiling).to_record()  # type: ignore[union-attr]


def _check_model_config(config: RunConfig, meta: ckpt.CheckpointMeta, where: Path) -> None:
    """The model section of config.json must be the one the checkpoint was built with (the
    model is built from the checkpoint's copy; an edit of config.json would be shown in the
    report but not used). Fields a checkpoint of an older version lacks count as defaults."""
    saved = json.loads(json.dumps(config.model.model_dump()))
    stored = dict(meta.model_config)
    defaults = json.loads(json.dumps(type(config.model)().model_dump()))
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    differ = sorted(k for k in saved.keys() | stored.keys() if saved.get(k) != stored.get(k))
    if differ:
        key = differ[0]
        raise CheckpointError(
            f"{where}: {CONFIG_FILE} says model.{key} = {saved.get(key)!r}, the checkpoint "
            f"was trained with {stored.get(key)!r} (edited or foreign run folder)"
        )


def check_scorable(run_dir: Path | str) -> RunConfig:
    """A run folder's config and checkpoint manifests, checked without loading weights."""
    folder = RunDir(Path(run_dir))
    config = folder.read_config()
    folder.check_checkpoints(config)
    return config


def open_run(run_dir: Path | str, device: str | torch.device | None = None) -> TrainedRun:
    """Open a run folder written by training or import (config + backbone; models lazily)."""
    folder = RunDir(Path(run_dir))
    config = folder.read_config()
    dev = resolve_device(device if device is not None else config.device)
    return TrainedRun(folder, config, dev, build_extractor(config.backbone, dev))
