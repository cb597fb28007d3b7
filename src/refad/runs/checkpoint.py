"""Checkpoints: safetensors for tensors plus JSON for everything else. Nothing is unpickled.

A trained unit (the unified model, or one category's model) lives in one folder. A checkpoint
is transactional: the weights and optimiser moments of an epoch are written first, under
names that carry the epoch and a hash of their bytes (`model-e0005-<sha>.safetensors`), and
only then does `checkpoint.json`, the manifest, switch to them in one atomic rename. The
manifest names each file with its size and sha256; files it does not name are left-overs of
an interrupted or superseded save, removed by the next writer. So whatever moment a save is
interrupted at (kill, Ctrl-C, full disk), the unit presents its last complete epoch.

Format 1 (before the manifest): fixed names `model.safetensors`, `optimizer.safetensors`,
the epoch checked in their metadata; still read, and rewritten as format 2 on the next save.
"""

from __future__ import annotations

import hashlib
import json
import stat
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from refad.atomic import fsync_dir, read_json, write_atomic, write_text_atomic
from refad.errors import CheckpointError
from refad.models.base import AnomalyModel, FeatureSpec, load_state_checked
from refad.models.registry import build_model
from refad.pipeline.calibration import Calibration
from refad.pipeline.preprocess import as_hw, size_value
from refad.runs.file_schemas import check_checkpoint
from refad.runs.layout import META_FILE, MODEL_FILE, OPTIMIZER_FILE, UNIFIED

FORMAT = "refad-checkpoint/2"
FORMAT_V1 = "refad-checkpoint/1"
KINDS = ("model", "optimizer")
LEGACY_NAMES = {"model": MODEL_FILE, "optimizer": OPTIMIZER_FILE}


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
    calibration: dict[str, Any] | None = None  # as stored; read it with `unit_calibration`
    format: str = FORMAT
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> name, bytes, sha256

    def feature_spec(self) -> FeatureSpec:
        s = self.spec
        return FeatureSpec(
            levels=tuple(s["levels"]),
            channels=tuple(s["channels"]),
            shapes=tuple(tuple(x) for x in s["shapes"]),
            image_size=as_hw(s["image_size"], "spec.image_size"),
            strides=tuple(s.get("strides", ())),  # absent before strides: derived from sizes
        )

    def unit_calibration(self, unit: str) -> Calibration:
        """The typed calibration of this checkpoint, the model of `unit` (a per-category unit
        is its category); empty when not calibrated (an imported run)."""
        return Calibration.from_record(self.calibration, None if unit == UNIFIED else unit)


def checkpoint_identity(meta: CheckpointMeta) -> dict[str, Any]:
    """What an evaluation records of the model it scored, so a report can tell when the run
    has trained on since (a resume after `refad test`)."""
    return {"epoch": meta.epoch, "model_sha256": (meta.files.get("model") or {}).get("sha256")}


def spec_to_dict(spec: FeatureSpec) -> dict[str, Any]:
    """checkpoint.json's spec; a square input size stays one integer, as before (H, W)."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
    return {**out, "image_size": size_value(spec.image_size)}


def has_checkpoint(unit_dir: Path) -> bool:
    return (Path(unit_dir) / META_FILE).is_file()


def tensor_files(unit_dir: Path) -> list[Path]:
    """The checkpoint tensor files in a unit folder, named or not by a manifest."""
    unit_dir = Path(unit_dir)
    if not unit_dir.is_dir():
        return []
    return sorted(p for p in unit_dir.iterdir()
                  if p.name.startswith(KINDS) and p.name.endswith(".safetensors"))


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes that depend on the tensors and metadata only. The library writes
    its metadata in hash-map order, which changes from call to call, so identical weights got
    another sha256 (and file name) in every save: a resumed run and a fresh one, or two runs
    of one seed, looked like different models. The header is written again with the metadata
    keys sorted; the tensor entries (already in a fixed order) and the data are unchanged."""
    blob = save_bytes(tensors, metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the padding safetensors itself uses: data stays aligned
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def _write_blob(unit_dir: Path, kind: str, epoch: int, data: bytes) -> dict[str, Any]:
    """Write one tensor file under its content name (skipped when it is already there)."""
    digest = hashlib.sha256(data).hexdigest()
    name = f"{kind}-e{epoch:04d}-{digest[:16]}.safetensors"
    path = unit_dir / name
    if not (path.is_file() and path.stat().st_size == len(data)):
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
    return {"name": name, "bytes": len(data), "sha256": digest}


def save_checkpoint(
    unit_dir: Path,
    model: AnomalyModel,
    meta: CheckpointMeta,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write an epoch's tensors, then switch the manifest to them (the one atomic step),
    then remove the files no manifest names any more."""
    unit_dir = Path(unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    tag = {"format": FORMAT, "method": meta.method, "epoch": str(meta.epoch)}
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = canonical_safetensors(weights, tag)
    files = {"model": _write_blob(unit_dir, "model", meta.epoch, blob)}
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        opt_tag = dict(tag, param_groups=json.dumps(groups))
        blob = canonical_safetensors(tensors, opt_tag)
        files["optimizer"] = _write_blob(unit_dir, "optimizer", meta.epoch, blob)
    fsync_dir(unit_dir)
    meta.format, meta.files = FORMAT, files
    write_text_atomic(unit_dir / META_FILE, json.dumps(asdict(meta), indent=2) + "\n")
    fsync_dir(unit_dir)
    remove_leftovers(unit_dir, meta)


def remove_leftovers(unit_dir: Path, meta: CheckpointMeta) -> list[Path]:
    """Delete tensor files the manifest does not name and stale temporaries (writers only)."""
    keep = {entry["name"] for entry in meta.files.values()}
    if meta.format == FORMAT_V1:
        keep |= set(LEGACY_NAMES.values())
    stale = [p for p in Path(unit_dir).iterdir()
             if p.name.startswith(".") and p.name.endswith(".tmp")]
    removed = [p for p in tensor_files(unit_dir) if p.name not in keep] + stale
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def read_meta(unit_dir: Path) -> CheckpointMeta:
    path = Path(unit_dir) / META_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint here (train first, or check --run)")
    data = read_json(path, CheckpointError)
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_V1):
        got = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{path}: not a refad checkpoint (format {got!r})")
    check_checkpoint(data, path)
    try:
        return CheckpointMeta(**data)
    except TypeError as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc})") from None


def tensor_path(unit_dir: Path, meta: CheckpointMeta, kind: str = "model") -> Path:
    """The file holding the `kind` ("model" or "optimizer") tensors of this checkpoint."""
    if meta.format == FORMAT_V1:
        return Path(unit_dir) / LEGACY_NAMES[kind]
    entry = meta.files.get(kind)
    if entry is None:
        raise CheckpointError(f"{Path(unit_dir) / META_FILE}: names no {kind} file")
    return Path(unit_dir) / entry["name"]


def _header_metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _load_tensors(
    unit_dir: Path, meta: CheckpointMeta, kind: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of one file, checked against the manifest."""
    path = tensor_path(unit_dir, meta, kind)
    entry = meta.files.get(kind)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a link to /dev/zero or a fifo: read forever
            raise CheckpointError(f"{path}: not a regular file")
        if entry is not None and info.st_size != entry.get("bytes"):  # known before reading
            raise CheckpointError(f"{path}: does not match its checksum in {META_FILE} (edited?)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if entry is not None and (
        len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256")
    ):
        raise CheckpointError(f"{path}: does not match its checksum in {META_FILE} (edited?)")
    try:
        tensors = load_bytes(data)
        tag = _header_metadata(data)
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if tag.get("method") != meta.method:
        raise CheckpointError(
            f"{path}: holds a {tag.get('method')!r} model, but the run is {meta.method!r}"
        )
    if tag.get("epoch") != str(meta.epoch):
        raise CheckpointError(
            f"{path}: written at epoch {tag.get('epoch')}, metadata says {meta.epoch} "
            "(interrupted save of a format-1 checkpoint)"
        )
    return tensors, tag


def load_model(
    unit_dir: Path, device: torch.device | str
) -> tuple[AnomalyModel, CheckpointMeta]:
    """Rebuild the model from metadata for `device`, load its weights strictly; eval mode."""
    unit_dir = Path(unit_dir)
    meta = read_meta(unit_dir)
    model = build_model(meta.method, meta.feature_spec(), meta.model_config, device)
    tensors, _ = _load_tensors(unit_dir, meta, "model")
    state = {k: v.to(device) for k, v in tensors.items()}
    where = str(tensor_path(unit_dir, meta, "model"))
    load_state_checked(model, state, where, f" ({meta.method})")
    return model.eval(), meta


def backbone_identity(
    extractor: Any, image_size: int | list[int], resize: str = "stretch",
    tiling: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What a checkpoint records of its backbone, so a reload can check it gets the same one.
    (A ViT's kind, a resize rule other than "stretch" and the tiling are added; the CNN,
    stretched, untiled identity stays as it was written before they existed.)"""
    extra = {k: v for k, v in (("kind", getattr(extractor, "kind", "cnn")), ("resize", resize))
             if v not in ("cnn", "stretch")}
    if tiling is not None:  # the model saw tiles at this scale: part of what it is
        extra["tiling"] = dict(tiling)
    return {
        "name": extractor.name,
        "levels": list(extractor.levels),
        "weights_id": extractor.weights_id,
        "aggregate_kernel": extractor.aggregate_kernel,
        "mean": list(extractor.mean),
        "std": list(extractor.std),
        "image_size": image_size,
        **extra,
    }


def load_optimizer(unit_dir: Path, optimizer: torch.optim.Optimizer, meta: CheckpointMeta) -> None:
    """Restore optimiser moments saved by `save_checkpoint`."""
    tensors, tag = _load_tensors(Path(unit_dir), meta, "optimizer")
    groups = json.loads(tag["param_groups"])
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
