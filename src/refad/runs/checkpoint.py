"""Checkpoints: safetensors for tensors plus JSON for everything else. Nothing is unpickled.

A trained unit (the unified model, or one category's model) lives in one folder:
- `model.safetensors`      weights; metadata names the method and the epoch
- `optimizer.safetensors`  optimiser moments, for `--resume`
- `checkpoint.json`        epoch, feature spec, backbone identity, calibration, history
Each file is written atomically; `checkpoint.json` goes last and its epoch must match the
tensors' metadata, so a crash between writes is detected instead of silently mixing epochs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from refad.atomic import write_atomic, write_text_atomic
from refad.errors import CheckpointError
from refad.models.base import FeatureSpec, ReconstructionModel, load_state_checked
from refad.models.registry import build_model
from refad.runs.layout import META_FILE, MODEL_FILE, OPTIMIZER_FILE

FORMAT = "refad-checkpoint/1"


@dataclass
class CheckpointMeta:
    """The JSON half of a checkpoint."""

    method: str
    epoch: int
    epochs: int
    spec: dict[str, Any]
    backbone: dict[str, Any]
    model_config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    format: str = FORMAT

    def feature_spec(self) -> FeatureSpec:
        s = self.spec
        return FeatureSpec(
            levels=tuple(s["levels"]),
            channels=tuple(s["channels"]),
            shapes=tuple(tuple(x) for x in s["shapes"]),
            image_size=int(s["image_size"]),
        )


def spec_to_dict(spec: FeatureSpec) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def has_checkpoint(unit_dir: Path) -> bool:
    return (Path(unit_dir) / META_FILE).is_file()


def save_checkpoint(
    unit_dir: Path,
    model: ReconstructionModel,
    meta: CheckpointMeta,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write weights, optimiser state and metadata atomically (metadata last)."""
    unit_dir = Path(unit_dir)
    tag = {"format": FORMAT, "method": meta.method, "epoch": str(meta.epoch)}
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_atomic(unit_dir / MODEL_FILE, lambda p: save_file(weights, str(p), metadata=tag))
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        opt_tag = dict(tag, param_groups=json.dumps(groups))
        write_atomic(
            unit_dir / OPTIMIZER_FILE, lambda p: save_file(tensors, str(p), metadata=opt_tag)
        )
    write_text_atomic(unit_dir / META_FILE, json.dumps(asdict(meta), indent=2) + "\n")


def read_meta(unit_dir: Path) -> CheckpointMeta:
    path = Path(unit_dir) / META_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint here (train first, or check --run)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a refad checkpoint (format {data.get('format')!r})")
    try:
        return CheckpointMeta(**data)
    except TypeError as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc})") from None


def _load_tensors(path: Path, meta: CheckpointMeta) -> dict[str, torch.Tensor]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            tag = fh.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if tag.get("method") != meta.method:
        raise CheckpointError(
            f"{path}: holds a {tag.get('method')!r} model, but the run is {meta.method!r}"
        )
    if tag.get("epoch") != str(meta.epoch):
        raise CheckpointError(
            f"{path}: written at epoch {tag.get('epoch')}, metadata says {meta.epoch} "
            "(interrupted save?)"
        )
    return tensors


def load_model(
    unit_dir: Path, device: torch.device | str
) -> tuple[ReconstructionModel, CheckpointMeta]:
    """Rebuild the model from metadata for `device`, load its weights strictly; eval mode."""
    unit_dir = Path(unit_dir)
    meta = read_meta(unit_dir)
    model = build_model(meta.method, meta.feature_spec(), meta.model_config, device)
    path = unit_dir / MODEL_FILE
    state = {k: v.to(device) for k, v in _load_tensors(path, meta).items()}
    load_state_checked(model, state, str(path), f" ({meta.method})")
    return model.eval(), meta


def backbone_identity(extractor: Any, image_size: int) -> dict[str, Any]:
    """What a checkpoint records of its backbone, so a reload can check it gets the same one."""
    return {
        "name": extractor.name,
        "levels": list(extractor.levels),
        "weights_id": extractor.weights_id,
        "aggregate_kernel": extractor.aggregate_kernel,
        "mean": list(extractor.mean),
        "std": list(extractor.std),
        "image_size": image_size,
    }


def load_optimizer(unit_dir: Path, optimizer: torch.optim.Optimizer, meta: CheckpointMeta) -> None:
    """Restore optimiser moments saved by `save_checkpoint`."""
    path = Path(unit_dir) / OPTIMIZER_FILE
    tensors = _load_tensors(path, meta)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        groups = json.loads((fh.metadata() or {})["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().to("cpu").contiguous()
    return tensors, sd["param_groups"]
