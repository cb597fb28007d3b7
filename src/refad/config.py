"""The configuration of a run, saved as `config.json` beside every run.

Method presets (`refad.presets`) fill these with each paper's settings; any field can be
overridden from the CLI or the Python API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from refad.config_base import StrictModel
from refad.errors import ConfigError

DataKind = Literal["mvtec", "visa", "folder"]


class DataConfig(StrictModel):
    """Where the images are and which categories to use."""

    kind: DataKind = "mvtec"
    root: str | None = None  # mvtec / visa root
    categories: list[str] | None = None  # None: all categories found
    split_csv: str | None = None  # VisA: default ROOT/split_csv/1cls.csv
    normal_dir: str | None = None  # folder layout
    anomalous_dir: str | None = None
    mask_dir: str | None = None
    test_normal_dir: str | None = None
    image_size: int = Field(256, ge=32)
    num_workers: int = Field(0, ge=0)


class BackboneConfig(StrictModel):
    """Frozen feature extractor: timm name, feature levels (timm out_indices) and weights."""

    name: str = "tf_efficientnet_b6"
    levels: list[int] = Field(default_factory=lambda: [2, 3])
    weights: str = "auto"  # "auto" | "none" | path to .pth/.safetensors
    aggregate_kernel: int = Field(3, ge=1)

    @field_validator("levels")
    @classmethod
    def _levels_valid(cls, v: list[int]) -> list[int]:
        if not v or any(lvl < 0 or lvl > 4 for lvl in v) or len(set(v)) != len(v):
            raise ValueError("levels must be distinct timm stage indices in 0..4")
        return sorted(v)


class TrainConfig(StrictModel):
    """Optimisation schedule. Checkpoint = last epoch (never chosen on test data)."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_step_epoch: int | None = Field(None, ge=1)  # multiply lr by lr_gamma from this epoch
    lr_gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 3407
    mode: Literal["unified", "per-category"] = "unified"
    feature_cache: str | None = None  # directory for cached features; None keeps them in memory
    val_fraction: float = Field(0.0, ge=0, lt=1)  # normal train images held out for calibration
    threshold_quantile: float = Field(0.99, gt=0, lt=1)
    feature_batch_size: int = Field(16, ge=1)
    # bf16 autocast of training steps on CUDA (ignored on the CPU, which stays float32); off by
    # default so that CPU and GPU runs agree to float tolerance.
    amp: bool = False
    # dtype of the cached features held on the training device ("float16" halves the memory)
    feature_storage: Literal["float32", "float16", "bfloat16"] = "float32"
    # torch.compile of the training loss (forward and backward): "none" runs eagerly; on CUDA,
    # "reduce-overhead" adds CUDA graphs (the eager step is bound by kernel launches). The
    # jitter's generator draws stay eager, so the noise stream is the same in every mode;
    # dropout (UniAD) draws from the compiler's generator instead: other masks, same law.
    # One H100, B6, batch 64: 1,399 img/s eager, 1,977 default, 2,358 reduce-overhead.
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"


class RunConfig(StrictModel):
    """Everything needed to reproduce a run."""

    method: str = "rlr"
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    model: dict[str, Any] = Field(default_factory=dict)  # validated by the method's own config
    device: str = "auto"

    def save(self, path: Path) -> None:
        from refad.engine.io import write_text_atomic

        write_text_atomic(path, json.dumps(self.model_dump(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.parse(data, where=str(path))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (value parsed as JSON, else taken as a string)."""
    data = config.model_dump()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a config section")
            node = node[part]
        node[parts[-1]] = value
    return RunConfig.parse(data, where="override")
