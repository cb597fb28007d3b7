"""Pack what a lent GPU machine needs for `realmix.py`, which cannot see `../shared` or PyPI.

The device call ships the working tree plus the git-ignored paths named in `carry`, 64 MiB in
all, while realmix's original files alone take 76 MiB. This writes one such path, `.carry/`
(ignored by the project's .gitignore):

- `.carry/realmix/`: realmix in its MVTec layout. The categories named by `--jpeg` go as
  copies at `--size` px made by refad's own decoding (RGB, bilinear resize: the
  preprocessing's first step), stored as JPEG of `--quality` without chroma subsampling (grey
  when the three channels agree). Their masks are binarised at > 0.5 at full size, then
  resized NEAREST. The other categories go as their original files. The copies are lossy: a
  run on them is a new measurement, and its report says which categories travelled so.
- `.carry/lite2-levels-0-3.safetensors`: the Lite2 weights of the stages that levels 0-3 run
  (every realmix preset), cut from the wheel's checkpoint: the same values, so the same
  features, in 4.5 of its 25 MB.
- `.carry/whl/`: wheels of the packages refad needs that the machine's image lacks.

    python benchmarks/gpu_kit.py            # pack, print the sizes, fail above the limit

Then one device call (`run` with `carry=[".carry"]`): `bash benchmarks/gpu_realmix.sh rlr crad`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from refad.data import read_image_rgb
from refad.data.images import read_mask
from refad.data.samples import list_images

LIMIT = 64 * 2**20
# Not in the device image's package list (/work/.library/device/KINDS.md); each goes at the
# version installed here, so both machines run the same code.
WHEELS = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection"]
WEIGHTS_FILE = "lite2-levels-0-3.safetensors"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def working_tree_bytes(repo: Path) -> int:
    """Bytes of the files that travel without `carry`: tracked and untracked-not-ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, check=True, capture_output=True,
    ).stdout
    names = [n for n in out.decode().split("\0") if n]
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def resized_copy(src_cat: Path, dst_cat: Path, size: int, quality: int) -> None:
    """JPEG copies of one category at ``size`` px, masks binarised before the NEAREST resize."""
    for img_dir in sorted(p for p in src_cat.glob("*/*") if p.is_dir()):
        rel = img_dir.relative_to(src_cat)
        if rel.parts[0] not in ("train", "test"):
            continue
        out_dir = dst_cat / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = src_cat / "ground_truth" / rel.parts[1]
        for path in list_images(img_dir):
            rgb = read_image_rgb(path)
            small = np.asarray(
                Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))
            grey = bool((small == small[..., :1]).all())
            Image.fromarray(small[..., 0] if grey else small).save(
                out_dir / f"{path.stem}.jpg", quality=quality, subsampling=0, optimize=True)
            mask_path = mask_dir / f"{path.stem}_mask.png"
            if rel.parts[0] == "test" and mask_path.is_file():
                mask = read_mask(mask_path, rgb.shape[:2], image=path)
                m = Image.fromarray(mask.astype(np.uint8) * 255)
                gt_dir = dst_cat / "ground_truth" / rel.parts[1]
                gt_dir.mkdir(parents=True, exist_ok=True)
                m.resize((size, size), Image.Resampling.NEAREST).save(
                    gt_dir / f"{path.stem}_mask.png", optimize=True)


def pack_data(root: Path, out: Path, lossy: set[str], size: int, quality: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for cat in sorted(d for d in root.iterdir() if (d / "train" / "good").is_dir()):
        if cat.name in lossy:
            resized_copy(cat, out / cat.name, size, quality)
            how = f"{size}-px JPEG copies, quality {quality}"
        else:
            shutil.copytree(cat, out / cat.name)
            how = "original files"
        print(f"{cat.name}: {tree_bytes(out / cat.name) / 2**20:.1f} MiB ({how})")


def pack_weights(out: Path) -> None:
    """The wheel's Lite2 weights of the stages levels 0-3 run, in timm names."""
    import safetensors.torch

    from refad.backbones import FeatureExtractor

    fe = FeatureExtractor("tf_efficientnet_lite2", levels=(0, 1, 2, 3), weights="auto")
    state = {k: v.contiguous() for k, v in fe.model.state_dict().items()}
    safetensors.torch.save_file(state, str(out))
    print(f"weights: {out.stat().st_size / 2**20:.1f} MiB ({len(state)} tensors)")


def pack_wheels(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out),
         *(f"{name}=={metadata.version(name)}" for name in WHEELS)],
        check=True,
    )
    print(f"wheels: {tree_bytes(out) / 2**20:.1f} MiB ({len(list(out.glob('*.whl')))} files)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--carry", type=Path, default=Path(".carry"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--quality", type=int, default=97)
    p.add_argument("--jpeg", default="ball_screw,magnetic_tile",
                   help="categories sent as resized JPEG copies (the others as their files)")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"{args.root}: realmix not found", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parent.parent
    pack_data(args.root, args.carry / "realmix", set(args.jpeg.split(",")), args.size,
              args.quality)
    pack_weights(args.carry / WEIGHTS_FILE)
    pack_wheels(args.carry / "whl")
    total = working_tree_bytes(repo) + tree_bytes(args.carry)
    print(f"travels: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
    if total > LIMIT:
        print("over the device call's limit: send more categories as copies, or lower --quality",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
