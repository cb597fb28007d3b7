"""Small file factories shared by the refad.data tests (tiny images written with PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def write_rgb(path: Path, hw: tuple[int, int] = (12, 16), value: int | None = None,
              seed: int = 0, fmt: str | None = None) -> np.ndarray:
    """Write an RGB image (random pixels, or one grey ``value``) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    else:
        pixels = np.full((*hw, 3), value, np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit 0/255 PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")


def box_mask(hw: tuple[int, int], top: int = 2, left: int = 3, side: int = 4) -> np.ndarray:
    mask = np.zeros(hw, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def make_mvtec_category(
    root: Path,
    name: str,
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    hw: tuple[int, int] = (12, 16),
    mask_suffix: str = "_mask",
) -> Path:
    """A tiny MVTec-style category: train/good, test/good, test/<defect> + ground_truth masks."""
    defects = {"crack": 2} if defects is None else defects
    cat = root / name
    for i in range(n_train):
        write_rgb(cat / "train" / "good" / f"{i:03d}.png", hw, seed=i)
    for i in range(n_good):
        write_rgb(cat / "test" / "good" / f"{i:03d}.png", hw, seed=100 + i)
    for defect, count in defects.items():
        for i in range(count):
            write_rgb(cat / "test" / defect / f"{i:03d}.png", hw, seed=200 + i)
            write_mask(cat / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png",
                       box_mask(hw, top=1 + i))
    return cat


# The CLI's tiny RLR training flags, and the one-line refusal every bad input must give.
TINY = ["--image-size", "64", "--backbone", "tf_efficientnet_lite2", "--weights", "none",
        "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "model.num_layers=1", "--set", "model.hidden_dims=[32, 64]"]


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]
