"""Opening a trained run folder: its config, backbone and the model of each unit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from refad.backbones import FeatureExtractor
from refad.config import RunConfig
from refad.engine.checkpoint import CheckpointMeta, load_model
from refad.engine.device import resolve_device
from refad.engine.train import CONFIG_FILE, build_extractor
from refad.engine.units import UNIFIED, unit_dir
from refad.errors import CheckpointError
from refad.models.base import ReconstructionModel


@dataclass
class TrainedRun:
    """A run loaded for inference. Models are loaded lazily, one per unit."""

    path: Path
    config: RunConfig
    device: torch.device
    extractor: FeatureExtractor
    _models: dict[str, tuple[ReconstructionModel, CheckpointMeta]] = field(default_factory=dict)

    @property
    def units(self) -> list[str]:
        if self.config.train.mode == "unified":
            return [UNIFIED]
        root = self.path / "categories"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def model(self, unit: str) -> tuple[ReconstructionModel, CheckpointMeta]:
        if unit not in self._models:
            model, meta = load_model(unit_dir(self.path, unit), self.device)
            if meta.backbone["weights_id"] != self.extractor.weights_id:
                raise CheckpointError(
                    f"{unit_dir(self.path, unit)}: trained with backbone weights "
                    f"{meta.backbone['weights_id']}, but {self.extractor.weights_id} are loaded"
                )
            self._models[unit] = (model, meta)
        return self._models[unit]


def open_run(run_dir: Path, device: str | torch.device | None = None) -> TrainedRun:
    """Load a run folder written by `fit` (config + backbone; models on first use)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: not a refad run folder (no {CONFIG_FILE})")
    config = RunConfig.load(cfg_path)
    dev = resolve_device(device if device is not None else config.device)
    return TrainedRun(run_dir, config, dev, build_extractor(config, dev).eval())
