"""Backbone features computed once and reused: RLR trains on a frozen backbone without image
augmentation, so every epoch would otherwise recompute identical features.

A cache entry is named by the sha256 of the JSON of its key parts (dataset fingerprint, backbone,
weights, levels, aggregation, image size and resize rule, normalisation), so changing any of them
misses the old entry. On disk an entry is one safetensors file whose metadata repeats the key JSON
and the shapes; both are checked on load. Files are written to a temporary name in the same
directory and moved into place with ``os.replace``, so a crash or an exception never leaves a
half-written entry under the real name. An unreadable entry is recomputed with a warning rather
than failing the run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from refad.atomic import write_atomic
from refad.backbones.base import Backbone
from refad.errors import DataError
from refad.pipeline.preprocess import as_hw, check_rule, size_value

CACHE_FORMAT = "refad-features-1"  # bump when the stored layout or feature semantics change

Features = list[torch.Tensor]


def _collate_images(items: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Stack only the images: other item fields (masks, paths, None) are not needed here."""
    return torch.stack([item["image"] for item in items])


def compute_features(
    extractor: Backbone,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = True,
) -> Features:
    """Run ``extractor`` over ``dataset`` (items: dicts with a normalised "image" (3, H, W)).

    Returns one float32 CPU tensor (N, C_l, H_l, W_l) per level, in dataset order. The
    extractor must already be on ``device``; only the batches are moved there.
    """
    param = next(extractor.parameters(), None)
    if param is not None and param.device.type != torch.device(device).type:
        raise ValueError(f"extractor is on {param.device}, compute_features was given {device}")
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise DataError("dataset: no images to compute backbone features for")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_images,
        pin_memory=torch.device(device).type == "cuda",
    )
    outputs: Features = []
    filled = 0
    with tqdm(total=total, desc="backbone features", unit="img", disable=not progress) as bar:
        for images in loader:
            levels = extractor(images.to(device, non_blocking=True))
            if not outputs:  # allocate once the level shapes are known
                outputs = [torch.empty((total, *f.shape[1:]), dtype=torch.float32) for f in levels]
            count = images.shape[0]
            for out, f in zip(outputs, levels, strict=True):
                out[filled : filled + count] = f.to("cpu", torch.float32)
            filled += count
            bar.update(count)
    if filled != total:
        raise RuntimeError(f"dataset yielded {filled} images, its length is {total}")
    return outputs


def feature_cache_key(
    extractor: Backbone,
    dataset_fingerprint: str,
    image_size: int | Sequence[int],
    resize: str = "stretch",
    **extra: str | int | float | bool,
) -> dict[str, Any]:
    """Key parts identifying features of ``extractor`` on one dataset at one input size
    ((height, width); an integer: square) reached by one resize rule. A square size with the
    default "stretch" keys as before both existed, so those caches stay valid."""
    hw = as_hw(image_size)
    rule = {} if check_rule(resize) == "stretch" else {"resize": resize}
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset_fingerprint,
        "backbone": extractor.name,
        "weights_id": extractor.weights_id,
        "levels": list(extractor.levels),
        "aggregate_kernel": extractor.aggregate_kernel,
        "image_size": size_value(hw),
        **rule,
        "mean": [float(v) for v in extractor.mean],
        "std": [float(v) for v in extractor.std],
        **extra,
    }


def _key_json(key_parts: Mapping[str, Any]) -> str:
    def fallback(value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, set | frozenset):
            return sorted(value)
        raise TypeError(f"feature cache key part of type {type(value).__name__} is not JSON")

    return json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=fallback)


def _shapes(features: Features) -> list[list[int]]:
    return [list(f.shape) for f in features]


def _check_features(features: object) -> Features:
    """Guard against a compute_fn returning something the cache cannot store or the trainer use."""
    if not isinstance(features, list | tuple) or not features:
        raise ValueError("compute_fn must return a non-empty list of tensors")
    if any(not isinstance(f, torch.Tensor) or f.ndim != 4 for f in features):
        raise ValueError("compute_fn must return (N, C, H, W) tensors")
    if len({f.shape[0] for f in features}) != 1:
        raise ValueError("compute_fn returned levels with different numbers of items")
    return list(features)


class FeatureCache:
    """Features by key: kept in memory when ``cache_dir`` is None, else as safetensors files."""

    def __init__(self, cache_dir: Path | str | None) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[str, tuple[str, Features]] = {}

    def path_for(self, key_parts: Mapping[str, Any]) -> Path | None:
        """File that holds (or would hold) the entry for ``key_parts``; None in memory mode."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(_key_json(key_parts).encode()).hexdigest()
        return self.cache_dir / f"features-{digest}.safetensors"

    def get_or_compute(
        self, key_parts: Mapping[str, Any], compute_fn: Callable[[], Features]
    ) -> Features:
        """Cached features for ``key_parts``; ``compute_fn()`` runs only on a miss."""
        key_json = _key_json(key_parts)
        if self.cache_dir is None:
            hit = self._memory.get(key_json)
            if hit is None:
                hit = (key_json, _check_features(compute_fn()))
                self._memory[key_json] = hit
            return list(hit[1])
        path = self.path_for(key_parts)
        assert path is not None
        if path.exists():
            loaded = self._load(path, key_json)
            if loaded is not None:
                return loaded
        features = _check_features(compute_fn())
        self._save(path, key_json, features)
        return features

    @staticmethod
    def _load(path: Path, key_json: str) -> Features | None:
        """Entry at ``path`` if it is intact and belongs to ``key_json``; else warn, return None."""
        try:
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != CACHE_FORMAT or meta.get("key") != key_json:
                    raise ValueError("stored key differs")
                shapes = json.loads(meta["shapes"])
                features = [fh.get_tensor(f"level_{i}") for i in range(len(shapes))]
            if _shapes(features) != shapes:
                raise ValueError(f"shapes {_shapes(features)} differ from recorded {shapes}")
            return _check_features(features)
        except Exception as exc:  # any defect means: recompute, never crash on a cache
            warnings.warn(
                f"{path}: unusable feature cache entry ({exc}); recomputing",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _save(self, path: Path, key_json: str, features: Features) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"level_{i}": f.detach().to("cpu").contiguous() for i, f in enumerate(features)}
        metadata = {
            "format": CACHE_FORMAT,
            "key": key_json,
            "shapes": json.dumps(_shapes(features)),
        }
        write_atomic(
            path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        )
