"""refad.data: reading images and masks, dataset layouts, the torch Dataset, synthetic demo data."""

from __future__ import annotations

from refad.data.dataset import ImageDataset, image_tensor, samples_fingerprint
from refad.data.folder import folder_samples
from refad.data.images import IMAGE_EXTENSIONS, image_size, read_image_rgb, read_mask
from refad.data.mvtec import list_mvtec_categories, mvtec_samples
from refad.data.samples import Sample, find_mask
from refad.data.splits import (
    by_category,
    collect_images,
    data_config,
    load_split,
    split_validation,
)
from refad.data.synthetic import (
    DEFAULT_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    defect_types,
    make_demo_dataset,
    render_sample,
)
from refad.data.visa import visa_samples

__all__ = [
    "DEFAULT_CATEGORIES",
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CATEGORIES",
    "ImageDataset",
    "image_tensor",
    "Sample",
    "defect_types",
    "find_mask",
    "folder_samples",
    "image_size",
    "list_mvtec_categories",
    "load_split",
    "by_category",
    "collect_images",
    "data_config",
    "split_validation",
    "make_demo_dataset",
    "mvtec_samples",
    "read_image_rgb",
    "read_mask",
    "render_sample",
    "samples_fingerprint",
    "visa_samples",
]
