"""refad.data: reading images and masks, dataset layouts, the torch Dataset, synthetic demo data."""

from __future__ import annotations

from typing import Any, Literal

from refad.data.dataset import ImageDataset, image_tensor, samples_fingerprint
from refad.data.folder import folder_samples
from refad.data.images import IMAGE_EXTENSIONS, image_size, read_image_rgb, read_mask
from refad.data.mvtec import list_mvtec_categories, mvtec_samples
from refad.data.samples import Sample, find_mask
from refad.data.synthetic import (
    DEFAULT_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    defect_types,
    make_demo_dataset,
    render_sample,
)
from refad.data.visa import visa_samples
from refad.errors import ConfigError

LAYOUTS = ("mvtec", "visa", "folder")


def load_samples(
    kind: Literal["mvtec", "visa", "folder"], split: Literal["train", "test"], **kw: Any
) -> list[Sample]:
    """Dispatch to the layout's loader: ``mvtec_samples(root=..., categories=...)``,
    ``visa_samples(root=..., categories=..., split_csv=...)`` or ``folder_samples(normal_dir=...,
    anomalous_dir=..., mask_dir=..., test_normal_dir=..., category=...)``."""
    loaders = {"mvtec": mvtec_samples, "visa": visa_samples, "folder": folder_samples}
    if kind not in loaders:
        raise ConfigError(f"data.kind: must be one of {', '.join(LAYOUTS)}, got {kind!r}")
    try:
        return loaders[kind](split=split, **kw)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise ConfigError(f"data ({kind}): {exc}") from None


__all__ = [
    "DEFAULT_CATEGORIES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SYNTHETIC_CATEGORIES",
    "ImageDataset",
    "image_tensor",
    "Sample",
    "defect_types",
    "find_mask",
    "folder_samples",
    "image_size",
    "list_mvtec_categories",
    "load_samples",
    "make_demo_dataset",
    "mvtec_samples",
    "read_image_rgb",
    "read_mask",
    "render_sample",
    "samples_fingerprint",
    "visa_samples",
]
