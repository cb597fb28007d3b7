"""Every PatchCore variant tried on realmix (levels, grid, coreset ratio, image score, input
size, unified or per category), Lite2, CPU: the seven metrics' means and per-category I-/P-AUROC.

    python benchmarks/patchcore_variants.py --root ../shared/data/realmix

The features of each input size are extracted once (refad's feature cache under --work); each
variant then fits its bank(s) on the training images the run would use (the preset holds out
10% for calibration) and scores the test split. This is the report that shows every setting
tried on the test images: the rows of `realmix.md` name which variant they run, and nothing
else was chosen on test images. Text from "## Reading these figures" on is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, kept_notes

from refad.api import FeatureCache, build_config, extract_features, write_text_atomic
from refad.backbones import build_extractor
from refad.data import ImageDataset, load_split, split_validation
from refad.metrics import METRIC_NAMES, MetricAccumulator
from refad.models.base import FeatureSpec
from refad.models.patchcore import PatchCore

# (name, input size, levels, model settings, per category)
VARIANTS: list[tuple[str, int, list[int], dict, bool]] = [
    ("L23", 256, [2, 3], {}, False),
    ("L23-reweighted", 256, [2, 3], {"image_score": "reweighted"}, False),
    ("L23-per-category", 256, [2, 3], {}, True),
    ("L123-grid8", 256, [1, 2, 3], {"grid_level": 1}, False),
    ("L123-grid8-per-category", 256, [1, 2, 3], {"grid_level": 1}, True),
    ("L123-grid4", 256, [1, 2, 3], {"grid_level": 0, "coreset_ratio": 0.0025}, False),
    ("L123-grid4-per-category", 256, [1, 2, 3], {"grid_level": 0, "coreset_ratio": 0.0025},
     True),
    ("512-L123-grid8", 512, [1, 2, 3], {"grid_level": 1, "coreset_ratio": 0.0025}, False),
    ("512-L123-grid8-per-category", 512, [1, 2, 3],
     {"grid_level": 1, "coreset_ratio": 0.0025}, True),
]


def features(root: Path, size: int, levels: list[int], work: Path, device: torch.device):
    """Training levels (the run's split), test levels, test labels, masks and categories."""
    cfg = build_config(method="patchcore", data="mvtec", root=root,
                       backbone="tf_efficientnet_lite2", levels=levels, image_size=size,
                       device=str(device), overrides=["model.embed_dim=null"])
    extractor = build_extractor(cfg.backbone, device)
    cache = FeatureCache(work / "feature-cache")
    train, _ = split_validation(load_split(cfg.data, "train"), cfg.train.val_fraction,
                                cfg.train.seed)
    test = load_split(cfg.data, "test")
    tr = extract_features(extractor, train, cfg, device, cache, progress=False)
    te = extract_features(extractor, test, cfg, device, cache, progress=False)
    ds = ImageDataset(test, size, extractor.mean, extractor.std)
    masks = torch.stack([ds._mask_tensor(s, (size, size))[0][0] > 0.5 for s in test])
    labels = torch.tensor([s.label for s in test])
    return tr, [s.category for s in train], te, labels, masks, [s.category for s in test]


def run_variant(data, size: int, settings: dict, per_category: bool) -> dict:
    tr, tr_cats, te, labels, masks, te_cats = data
    spec = FeatureSpec(tuple(range(len(tr))), tuple(x.shape[1] for x in tr),
                       tuple(tuple(x.shape[-2:]) for x in tr), size)
    from refad.models.patchcore.config import PatchCoreConfig

    config = PatchCoreConfig(**settings)
    groups = sorted(set(tr_cats)) if per_category else [None]
    banks: dict = {}
    tic = time.perf_counter()
    for group in groups:
        idx = [i for i, c in enumerate(tr_cats) if group is None or c == group]
        model = PatchCore(spec, config)
        model.fit(([x[idx[i : i + 32]] for x in tr] for i in range(0, len(idx), 32)), seed=0)
        banks[group] = model.eval()
    fit_s = time.perf_counter() - tic
    tic = time.perf_counter()
    result = {}
    with torch.inference_mode():
        for category in sorted(set(te_cats)):
            model = banks[category if per_category else None]
            acc = MetricAccumulator()
            idx = [i for i, c in enumerate(te_cats) if c == category]
            for s in range(0, len(idx), 16):
                b = idx[s : s + 16]
                scores = model.score([x[b] for x in te])
                acc.update(scores.image, labels[b], scores.maps, masks[b])
            result[category] = acc.compute()
    mean = {n: float(np.mean([r[n] for r in result.values()])) for n in METRIC_NAMES}
    return {"categories": result, "mean": mean, "fit_s": fit_s,
            "score_s": time.perf_counter() - tic,
            "bank": sum(int(m.bank.shape[0]) for m in banks.values())}


def render(report: dict, notes: str) -> str:
    cats = sorted(next(iter(report["variants"].values()))["categories"])
    head = ("| variant | px | levels | settings | per category | bank | fit s | score s | "
            "I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AU-PRO | "
            + " | ".join(f"{c} I / P" for c in cats) + " |")
    lines = [
        "# PatchCore on realmix: every variant tried (Lite2, CPU)\n",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}. Banks fitted on the training images a run uses (10% "
        "held out for calibration), scored on the whole test split; exact metrics, masks "
        "binarised at > 0.5, pixel metrics at the input size. Fit and score seconds exclude "
        "feature extraction (cached).\n",
        head, "|---|---:|---|---|---|---:|---:|---:|" + "---:|" * (7 + len(cats)),
    ]
    for name, v in report["variants"].items():
        m = v["mean"]
        lines.append(
            f"| {name} | {v['size']} | {v['levels']} | `{json.dumps(v['settings'])}` | "
            f"{'yes' if v['per_category'] else 'no'} | {v['bank']} | {v['fit_s']:.0f} | "
            f"{v['score_s']:.0f} | "
            + " | ".join(f"{100 * m[n]:.1f}" for n in METRIC_NAMES) + " | "
            + " | ".join(f"{100 * v['categories'][c]['i_auroc']:.1f} / "
                         f"{100 * v['categories'][c]['p_auroc']:.1f}" for c in cats) + " |")
    return "\n".join(lines) + "\n\n" + notes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--work", type=Path, default=Path("runs/patchcore-variants"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/patchcore_variants.md"))
    p.add_argument("--only", default="", help="comma-separated variant names (default all)")
    args = p.parse_args()
    if not args.root.is_dir():
        print(f"realmix not found at {args.root}; nothing to do", file=sys.stderr)
        return 2
    device = torch.device("cpu")
    json_path = args.out.with_suffix(".json")
    report = json.loads(json_path.read_text()) if json_path.exists() else {"variants": {}}
    report["command"] = "python " + " ".join(sys.argv)
    report["machine"] = (f"{cpu_model()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}")
    wanted = set(filter(None, args.only.split(",")))
    loaded: dict = {}
    for name, size, levels, settings, per_category in VARIANTS:
        if wanted and name not in wanted:
            continue
        key = (size, tuple(levels))
        if key not in loaded:
            loaded.clear()  # one size's features in memory at a time
            loaded[key] = features(args.root, size, levels, args.work, device)
        result = run_variant(loaded[key], size, settings, per_category)
        report["variants"][name] = {"size": size, "levels": levels, "settings": settings,
                                    "per_category": per_category, **result}
        m = result["mean"]
        print(f"{name}: {100 * m['i_auroc']:.1f} / {100 * m['p_auroc']:.1f}", flush=True)
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
        write_text_atomic(args.out, render(report, kept_notes(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
