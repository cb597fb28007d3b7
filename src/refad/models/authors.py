"""Import the checkpoints written by the authors' public code (RLR, UniAD, CRAD): the
machinery shared by every method; each method folder's `authors.py` gives its `AuthorsFormat`
(key rules, refused variants, structure read from the weights), named in its registry entry.

Sources (read for their structure and key names; see docs/methods.md for the full tables):
- RLR   hlr7999/RLR        `trainer.py` saves {"state_dict": [one state_dict per level], ...}
- UniAD zhiyuanyou/UniAD   `tools/train_val.py` saves {"state_dict": DDP model state_dict, ...}
- CRAD  tae-mo/CRAD        same saver as UniAD (MobileNetV3-bottleneck version of the model)

Files are opened with `torch.load(..., weights_only=True)`: nothing is unpickled but tensors,
plain containers and numbers. The authors' files also carry training metadata that the plain
weights-only loader rejects, so a short, fixed allowlist is added for the duration of the load:
numpy scalars/arrays (their metric values) and `easydict.EasyDict` (their config), the latter
rebuilt as a plain `OrderedDict` - no code from either package runs. Any other object is refused
with a `CheckpointError` naming the file.

The authors' backbone weights (UniAD/CRAD store them under `backbone.*`) are ignored: the
reconstruction network is imported for the backbone refad is configured with, which must give
the same features for the reconstruction to mean the same thing.
"""

from __future__ import annotations

import collections
import importlib
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refad.config.methods import METHODS, method_entry
from refad.errors import CheckpointError, ConfigError
from refad.models.base import FeatureSpec, ReconstructionModel, load_state_checked
from refad.models.registry import build_model

Tensor = torch.Tensor
StateDict = dict[str, Tensor]


# ----------------------------------------------------------------------------------- loading


def _metadata_globals() -> list[Any]:
    """Inert globals found in the authors' files besides tensors (see the module docstring)."""
    import numpy as np

    allowed: list[Any] = [np.ndarray, np.dtype, (collections.OrderedDict, "easydict.EasyDict")]
    core = getattr(np, "_core", None) or np.core
    for name in ("scalar", "_reconstruct"):
        fn = getattr(core.multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


# torch's own lines around the reason: how to load the file anyway (weights_only=False, an
# allowlist), where its documentation is; a refusal says none of that
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue",
                 "(1)", "(2)")


def _first_sentence(text: str) -> str:
    """torch's reason without the advice it appends ("This is an internal miniz error. If
    you are seeing this error, ..."): its first line, cut at its first sentence's end."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    line = (kept or lines or [""])[0]
    return line.split(". ", 1)[0].removesuffix(".")[:200]


def _unpickling_problem(exc: Exception) -> tuple[bool, str]:
    """(refused_object, one-line detail) from torch's multi-line weights-only error."""
    text = str(exc)
    # "Unsupported global: GLOBAL x.y" (allowlist), "unsupported GLOBAL x.y whose module x is
    # blocked" (os, subprocess, ...: torch then leads with its weights_only=False advice)
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return True, f"global {found.group(1)}"
    found = re.search(r"(Can only [^\n]*)", text)
    if found:
        return True, found.group(1)[:200]
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return False, (_first_sentence(found.group(1)) if found else _first_sentence(text)
                   or type(exc).__name__)


def load_authors_file(path: Path | str) -> Any:
    """torch.load a file weights-only (plus the metadata allowlist); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:  # torch warns on some foreign files: the one line below says what went wrong
        with torch.serialization.safe_globals(_metadata_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused, detail = _unpickling_problem(exc)
        if refused:
            raise CheckpointError(
                f"{path}: refused, holds an object other than tensors and plain data "
                f"({detail}); refad loads weights only"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from None
    except Exception as exc:  # noqa: BLE001 - a foreign file fails in any way the unpickler can
        reason = _first_sentence(str(exc))
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from None


def _as_state_dict(obj: Any, where: str) -> StateDict:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{where}: expected a non-empty dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    return dict(obj)


def state_dicts_of(obj: Any, method: str, where: str) -> list[StateDict]:
    """The authors' state_dict(s) inside a loaded file: RLR a list (one per level), else one."""
    inner = obj["state_dict"] if isinstance(obj, Mapping) and "state_dict" in obj else obj
    if authors_format(method).per_level:
        if isinstance(inner, Mapping):  # a single level's model saved on its own
            inner = [inner]
        if not isinstance(inner, list | tuple) or not inner:
            raise CheckpointError(f"{where}: expected a list of per-level state_dicts for RLR")
        return [_as_state_dict(sd, f"{where} [level {i}]") for i, sd in enumerate(inner)]
    return [_as_state_dict(inner, where)]


# ----------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Rule:
    """Authors' key (regex, full match) -> refad key template; `qkv` splits a packed in_proj."""

    pattern: str
    target: str
    qkv: bool = False
    transform: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class AuthorsFormat:
    """How one method's authors save their network, as far as importing needs to know."""

    rules: tuple[Rule, ...]
    # key pattern -> the variant of the authors' code it names, which refad does not implement
    unsupported: tuple[tuple[str, str], ...]
    # the model config's structural fields, read from the (unwrapped) state dict(s)
    infer: Callable[[list[StateDict], str], dict[str, Any]]
    per_level: bool = False  # one state dict per backbone level (RLR), else one network
    epoch_is_index: bool = False  # the file's `epoch` is the 0-based index of the last one
    fixed: Mapping[str, Any] = field(default_factory=dict)  # config the authors' code fixes


def authors_methods() -> tuple[str, ...]:
    """The registered methods whose authors' checkpoints import."""
    return tuple(sorted(name for name, entry in METHODS.items() if entry.authors))


def authors_format(method: str) -> AuthorsFormat:
    """The format a method's folder registered (`authors="module:NAME"`)."""
    target = method_entry(method).authors
    if target is None:
        raise ConfigError(f"method {method!r}: authors' checkpoints exist for "
                          f"{', '.join(authors_methods())}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)





def map_keys(method: str, state: StateDict, where: str) -> StateDict:
    """Rename the authors' keys to refad's (per level for RLR, without the `levels.i.` part)."""
    fmt = authors_format(method)
    for pattern, what in fmt.unsupported:
        hit = next((k for k in state if re.fullmatch(pattern, k)), None)
        if hit is not None:
            raise CheckpointError(f"{where}: {what} is not supported (key {hit!r})")
    out: StateDict = {}
    for key, value in state.items():
        rule = next((r for r in fmt.rules if re.fullmatch(r.pattern, key)), None)
        if rule is None:
            raise CheckpointError(f"{where}: unexpected key {key!r} for an authors' {method}")
        target = re.sub(rule.pattern, rule.target, key)
        if rule.transform is not None:
            value = rule.transform(value)
        if rule.qkv:
            if value.shape[0] % 3 != 0:
                raise CheckpointError(f"{where}: {key} of shape {tuple(value.shape)} is not q|k|v")
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[target.format(name)] = part.clone()
        else:
            out[target] = value
    return out


def strip_wrappers(state: StateDict) -> tuple[StateDict, list[str]]:
    """Drop DDP's `module.` and the authors' ModelHelper prefix `reconstruction.`.

    Returns the reconstruction network's entries and the names of the entries left out (the
    backbone's, when the file holds the whole ModelHelper).
    """
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("reconstruction.") for k in state):
        return state, []
    prefix = "reconstruction."
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return kept, sorted(k for k in state if not k.startswith(prefix))


def _keys_match(method: str, obj: Any) -> bool:
    """Whether every key of `obj` read as `method`'s file is a key of that method's network."""
    try:
        states = state_dicts_of(obj, method, "")
    except CheckpointError:
        return False
    keys = [key for state in states for key in strip_wrappers(state)[0]]
    rules = authors_format(method).rules
    return bool(keys) and all(any(re.fullmatch(rule.pattern, key) for rule in rules)
                              for key in keys)


def check_method_of(obj: Any, method: str, where: str) -> None:
    """A file of another method is named as such: read as `method`, it failed on a missing key
    or a level count, which sent users to their levels and config, not to `--method`."""
    if _keys_match(method, obj):
        return
    other = next((m for m in authors_methods() if m != method and _keys_match(m, obj)), None)
    if other is not None:
        raise CheckpointError(
            f"{where}: this is an authors' {other} checkpoint, not {method} (import it as "
            f"method {other})")


# ------------------------------------------------------------------- config from the weights


def indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))})


def need(state: Mapping[str, Tensor], key: str, where: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{where}: missing {key!r}")
    return state[key]


# ----------------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    """What an import did: the source, the inferred model config and the keys left out."""

    method: str
    source: str
    sha256: str
    model_config: dict[str, Any]
    authors_keys: int
    ignored_keys: list[str] = field(default_factory=list)
    epoch: int | None = None


def _sha256(path: Path) -> str:
    from refad.backbones import file_sha256

    return file_sha256(path)


def _load_strict(model: ReconstructionModel, state: StateDict, where: str) -> None:
    load_state_checked(model, state, where, " (different backbone, levels or image size?)")


def convert_authors_state(
    method: str,
    obj: Any,
    spec: FeatureSpec,
    model_config: Mapping[str, Any] | None = None,
    where: str = "checkpoint",
) -> tuple[ReconstructionModel, dict[str, Any], list[str]]:
    """Authors' loaded object -> (refad model in eval mode, its model config, ignored keys)."""
    fmt = authors_format(method)
    check_method_of(obj, method, where)
    raw = state_dicts_of(obj, method, where)
    ignored: list[str] = []
    state: StateDict = {}
    if fmt.per_level:
        raw = [strip_wrappers(sd)[0] for sd in raw]
        if len(raw) != len(spec.levels):
            raise CheckpointError(
                f"{where}: {len(raw)} level model(s), but the backbone gives "
                f"{len(spec.levels)} level(s) {list(spec.levels)}"
            )
        inferred = fmt.infer(raw, where)
        for i, sd in enumerate(raw):
            for key, value in map_keys(method, sd, f"{where} [level {i}]").items():
                state[f"levels.{i}.{key}"] = value
    else:
        stripped, ignored = strip_wrappers(raw[0])
        inferred = fmt.infer([stripped], where)
        state = map_keys(method, stripped, where)
    inferred.update(fmt.fixed)
    config = {**dict(model_config or {}), **inferred}  # the weights decide the structure
    model = build_model(method, spec, config)
    _load_strict(model, state, where)
    return model.eval(), model.config.model_dump(), ignored


def import_authors_checkpoint(
    method: str,
    path: Path | str,
    spec: FeatureSpec,
    model_config: Mapping[str, Any] | None = None,
    loaded: Any = None,
) -> tuple[ReconstructionModel, ImportReport]:
    """Load an authors' checkpoint file into a refad model (CPU, eval mode) and report what
    was read and left out.

    `spec` describes the features of the matching backbone. Structural hyper-parameters
    (widths, layer counts, grid sizes, expansion) are read from the weights and win over
    `model_config`, which supplies the rest (e.g. UniAD's `neighbour_window`, which the
    weights do not show). `loaded`: the file's content when the caller has read it already.
    """
    path = Path(path)
    obj = load_authors_file(path) if loaded is None else loaded
    model, config, ignored = convert_authors_state(method, obj, spec, model_config, str(path))
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    if authors_format(method).epoch_is_index and isinstance(epoch, int):
        epoch += 1
    count = sum(len(sd) for sd in state_dicts_of(obj, method, str(path)))
    report = ImportReport(
        method=method,
        source=str(path),
        sha256=_sha256(path),
        model_config=config,
        authors_keys=count,
        ignored_keys=ignored,
        epoch=epoch if isinstance(epoch, int) else None,
    )
    return model, report
