"""Generated files laid out like MVTec AD 2 and Real-IAD (names, folders, JSON fields, masks).

The real datasets cannot be downloaded here; these trees follow their published layouts
(docs/datasets.md says which sources were read) at a few pixels per image. Defective images
carry a bright square where their 0/255 mask is set, so that a model can find it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1")
DEFECT_CODES = ("AK", "BX", "HS")  # Real-IAD's defect codes are two letters (pit, ...)


def _picture(hw: tuple[int, int], seed: int, defect: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((*hw, 3), 110, np.uint8)
    base += rng.integers(0, 20, (*hw, 3), dtype=np.uint8)
    if defect is not None:
        base[defect] = (250, 30, 30)
    return base


def _square(hw: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    side = max(2, min(hw) // 5)
    top, left = rng.integers(0, hw[0] - side), rng.integers(0, hw[1] - side)
    mask = np.zeros(hw, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def _save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_mvtec_ad2(
    root: Path,
    objects: tuple[str, ...] = ("can", "vial"),
    n_train: int = 4,
    n_validation: int = 3,
    n_good: int = 2,
    n_bad: int = 3,
    n_private: int = 2,
    hw: tuple[int, int] = (40, 56),
) -> Path:
    """ROOT/OBJECT/{train/good, validation/good, test_public/{good, bad, ground_truth/bad},
    test_private, test_private_mixed}; names NNN_<lighting>.png, masks NNN_<lighting>_mask.png."""
    for k, obj in enumerate(objects):
        base = root / obj
        seed = 1000 * k
        for i in range(n_train):
            _save(base / "train" / "good" / f"{i:03d}_regular.png", _picture(hw, seed + i))
        for i in range(n_validation):
            _save(base / "validation" / "good" / f"{i:03d}_regular.png",
                  _picture(hw, seed + 100 + i))
        for i in range(n_good):
            name = f"{i:03d}_{LIGHTINGS[i % len(LIGHTINGS)]}"
            _save(base / "test_public" / "good" / f"{name}.png", _picture(hw, seed + 200 + i))
        for i in range(n_bad):
            name = f"{i:03d}_{LIGHTINGS[i % len(LIGHTINGS)]}"
            mask = _square(hw, seed + 300 + i)
            _save(base / "test_public" / "bad" / f"{name}.png",
                  _picture(hw, seed + 300 + i, mask))
            _save(base / "test_public" / "ground_truth" / "bad" / f"{name}_mask.png",
                  mask.astype(np.uint8) * 255)
        for split in ("test_private", "test_private_mixed"):
            for i in range(n_private):
                _save(base / split / f"{i:03d}_{LIGHTINGS[i % len(LIGHTINGS)]}.png",
                      _picture(hw, seed + 400 + i))
    return root


def make_real_iad(
    root: Path,
    objects: tuple[str, ...] = ("audiojack", "toy_brick"),
    n_train: int = 3,
    n_test_ok: int = 2,
    n_test_ng: int = 2,
    hw: tuple[int, int] = (32, 32),
    resolution: str = "1024",
) -> Path:
    """ROOT/realiad_<res>/OBJECT/{OK/Sxxxx, NG/<code>/Sxxxx}/OBJECT_xxxx_<OK|NG>_Ck_<time>.jpg,
    masks beside the images as .png (0/255), and ROOT/realiad_jsons/realiad_jsons/OBJECT.json
    with meta/train/test. In a defective sample, views C1 and C2 show the defect; the other
    views list anomaly_class "OK" and no mask (the part is anomalous if any view is)."""
    jsons = root / "realiad_jsons" / "realiad_jsons"
    jsons.mkdir(parents=True, exist_ok=True)
    for k, obj in enumerate(objects):
        obj_dir = root / f"realiad_{resolution}" / obj
        split: dict[str, list[dict]] = {"train": [], "test": []}
        plan = ([("train", "OK")] * n_train + [("test", "OK")] * n_test_ok
                + [("test", DEFECT_CODES[i % len(DEFECT_CODES)]) for i in range(n_test_ng)])
        for number, (part, code) in enumerate(plan, start=1):
            state = "OK" if code == "OK" else "NG"
            folder = sample_folder(state, code, number)
            for view in range(1, 6):
                stem = f"{obj}_{number:04d}_{state}_C{view}_2023102113{view:02d}{number:02d}"
                image_rel = f"{folder}/{stem}.jpg"
                seed = 10_000 * k + 10 * number + view
                defective = state == "NG" and view <= 2
                mask = _square(hw, seed) if defective else None
                _save(obj_dir / image_rel, _picture(hw, seed, mask), fmt="JPEG")
                entry = {"category": obj, "anomaly_class": code if defective else "OK",
                         "image_path": image_rel, "mask_path": None}
                if defective:
                    entry["mask_path"] = f"{folder}/{stem}.png"
                    _save(obj_dir / entry["mask_path"], mask.astype(np.uint8) * 255)
                split[part].append(entry)
        doc = {"meta": {"prefix": "", "normal_class": "OK", "pre_transform": None}, **split}
        (jsons / f"{obj}.json").write_text(json.dumps(doc, indent=1))
    return root


def sample_folder(state: str, code: str, number: int) -> str:
    """A sample's folder relative to its object: OK/S0001 or NG/<code>/S0001."""
    return f"OK/S{number:04d}" if state == "OK" else f"NG/{code}/S{number:04d}"
