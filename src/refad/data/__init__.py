"""refad.data: reading images and masks, dataset layouts, the torch Dataset, synthetic demo data.

Names are loaded on first use, so that `refad.data.images` (numpy and PIL only) serves the
torch-free deployment code without importing the torch Dataset.
"""

from __future__ import annotations

from refad.lazy import lazy_attributes

_EXPORTS = {
    "ImageDataset": "dataset", "TileDataset": "dataset", "image_tensor": "dataset",
    "samples_fingerprint": "dataset",
    "folder_samples": "folder",
    "IMAGE_EXTENSIONS": "images", "image_size": "images", "read_image_rgb": "images",
    "read_mask": "images",
    "list_mvtec_categories": "mvtec", "mvtec_samples": "mvtec",
    "Sample": "samples", "find_mask": "samples",
    "by_category": "splits", "collect_images": "splits", "data_config": "splits",
    "load_split": "splits", "split_validation": "splits",
    "DEFAULT_CATEGORIES": "synthetic", "SYNTHETIC_CATEGORIES": "synthetic",
    "defect_types": "synthetic", "make_demo_dataset": "synthetic", "render_sample": "synthetic",
    "visa_samples": "visa",
    "list_mvtec_ad2_objects": "mvtec_ad2", "mvtec_ad2_samples": "mvtec_ad2",
    "list_real_iad_objects": "real_iad", "real_iad_samples": "real_iad",
    "validation_split": "splits",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes("refad.data", _EXPORTS)
