"""Where a routed PatchCore run sends realmix's test pictures: for each category, how many of
its test tiles (or pictures, untiled) the model routes to its own product's bank rows.

    python benchmarks/patchcore_routing.py --run runs/realmix/patchcore-e1-b32-tiled-routed

Routing is the model's own rule (`PatchCore.route`: the product of the nearest training
picture by mean patch feature), applied to every test picture of the run's test split.
Writes benchmarks/patchcore_routing.md (text from "## Reading these figures" on is kept).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
from machine import cpu_model, kept_notes
from torch.utils.data import DataLoader

from refad.api import open_run
from refad.data import ImageDataset, by_category, load_split
from refad.data.dataset import TileDataset
from refad.pipeline.tiled import Tiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "patchcore_routing.md")
    args = parser.parse_args()
    run = open_run(args.run, "cpu")
    model, _ = run.model("unified")
    if not model.config.route:
        raise SystemExit(f"{args.run}: not a routed run (model.route is false)")
    names = sorted(by_category(load_split(run.config.data, "train")))
    tiling = Tiling.of(run.config.data.tiling)
    size = run.config.data.image_size
    rows = []
    with torch.inference_mode():
        for category, samples in sorted(by_category(load_split(run.config.data, "test")).items()):
            dataset = (TileDataset(samples, tiling, size, run.extractor.mean, run.extractor.std)
                       if tiling else ImageDataset(samples, size, run.extractor.mean,
                                                   run.extractor.std))
            got: Counter[str] = Counter()
            for batch in DataLoader(dataset, batch_size=16):
                routed = model.route(model.embed(run.extractor(batch["image"])))
                got.update(names[i] for i in routed.tolist())
            total = sum(got.values())
            others = ", ".join(f"{n} {c}" for n, c in got.most_common() if n != category)
            rows.append(f"| {category} | {total} | {got[category]} | "
                        f"{100 * got[category] / total:.1f} | {others or '-'} |")
    unit = "tiles" if tiling else "pictures"
    lines = [
        "# PatchCore routing on realmix: which product's bank rows each test picture reaches",
        "",
        f"Command: `python benchmarks/patchcore_routing.py --run {args.run}`. Machine: "
        f"{cpu_model()}. Run: `{args.run.name}` ({run.config.backbone.name}, levels "
        f"{run.config.backbone.levels}, {'tiled' if tiling else 'resized'}). Each test {unit[:-1]} "
        "goes to the product of its nearest training picture by mean patch feature, the "
        "model's own rule; no label is used.",
        "",
        f"| category | test {unit} | routed to own product | % | routed elsewhere |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines) + "\n" + kept_notes(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
