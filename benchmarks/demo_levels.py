"""Which backbone level separates the demo's products: image scores of each level on its own.

RLR trains one independent network per level and averages the levels' maps, so a trained
two-level run can be scored level by level without training again. Per product and level: the
I-AUROC on the test images, the training (calibration) images' median and largest score, the
good and defective test images' range, and the decisions at the 0.99 sample quantile of the
training images' scores. The test images are the demo's only labelled images: this looks at
them, and demo.md says which choice followed from it.

    python benchmarks/demo_configs.py two-level 192 40 model.num_layers=2 \
        'backbone.levels=[2,3]' 'model.hidden_dims=[128,256]' demo.threshold_quantile=0.99
    python benchmarks/demo_levels.py --run /tmp/refad-demo-configs/run-two-level

(the table in demo_levels.md came from `refad demo`'s run before the demo kept level 3 alone:
the same two-level configuration.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from refad import api
from refad.data import ImageDataset, by_category, load_split
from refad.metrics.functional import auroc
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps


@torch.inference_mode()
def level_scores(run: api.TrainedRun, samples: list) -> dict[str, np.ndarray]:
    """Image score of each level alone ("level N") and of their mean map (the run's own)."""
    model, _ = run.model("unified")
    model.eval()
    size = run.config.data.image_size
    dataset = ImageDataset(samples, size, run.extractor.mean, run.extractor.std)
    sigma = run.config.model.gaussian_sigma
    names = [f"level {lvl}" for lvl in run.config.backbone.levels]
    out: dict[str, list[torch.Tensor]] = {n: [] for n in [*names, "mean of levels"]}
    for start in range(0, len(dataset), 16):
        stop = min(start + 16, len(dataset))
        batch = torch.stack([dataset[i]["image"] for i in range(start, stop)])
        targets = model.targets(run.extractor(batch))
        maps = [upsample_maps(mse_cosine_map(rec, tgt), size, align_corners=True)
                for rec, tgt in zip(model.reconstruct(targets), targets, strict=True)]
        for name, level_map in zip(names, maps, strict=True):
            out[name].append(max_score(gaussian_blur(level_map, sigma)))
        out["mean of levels"].append(max_score(gaussian_blur(torch.stack(maps).mean(0), sigma)))
    return {n: torch.cat(v).numpy() for n, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("demo_levels.md"))
    args = p.parse_args(argv)
    run = api.open_run(args.run, "cpu")
    test = by_category(load_split(run.config.data, "test"))
    train = by_category(load_split(run.config.data, "train"))
    lines = [
        "# The demo's products, scored by each backbone level alone",
        "",
        f"Run `{args.run}` (levels {run.config.backbone.levels}, "
        f"{run.config.data.image_size} px). Command: `python benchmarks/demo_levels.py "
        f"--run {args.run}`. Thresholds: the 0.99 sample quantile of the product's training "
        "images' scores.",
        "",
        "| product | scored by | I-AUROC | training median / max | good test median / max | "
        "defective test min | defects flagged | false alarms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for category, samples in test.items():
        labels = np.array([s.label for s in samples])
        tested, trained = level_scores(run, samples), level_scores(run, train[category])
        for name, scores in tested.items():
            good, bad, normal = scores[labels == 0], scores[labels == 1], trained[name]
            threshold = np.quantile(normal, 0.99)
            lines.append(
                f"| {category} | {name} | {100 * auroc(scores, labels):.1f} | "
                f"{np.median(normal):.2f} / {normal.max():.2f} | "
                f"{np.median(good):.2f} / {good.max():.2f} | {bad.min():.2f} | "
                f"{(bad > threshold).sum()}/{bad.size} | {(good > threshold).sum()}/{good.size} |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
