"""The demo's configuration, chosen on the demo's own data: RLR variants side by side.

Each variant trains on the demo's generated products (`refad.api.demo_settings`, held-out
calibration) and is evaluated on their test images; the rows append to demo_configs.jsonl and
demo.md is rendered from all rows. The test images are the demo's only labelled images, so
the choice is made on them: the table shows every variant tried.

    python benchmarks/demo_configs.py small40 128 40 model.num_layers=2 \
        'model.hidden_dims=[128,256]'
    python benchmarks/demo_configs.py NAME SIZE EPOCHS [--set-style overrides ...]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from machine import cpu_model

from refad import api
from refad.config import apply_overrides

HERE = Path(__file__).resolve().parent
WORK = Path("/tmp/refad-demo-configs")


def demo_changes(sets: list[str]) -> tuple[dict, list[str]]:
    """`demo.FIELD=VALUE` arguments change the demo's settings (n_train, calibration_images,
    ...); the rest are --set overrides of the run configuration."""
    changes = {}
    for item in (s for s in sets if s.startswith("demo.")):
        key, value = item.removeprefix("demo.").split("=", 1)
        changes[key] = json.loads(value) if value[:1].isdigit() else value
    return changes, [s for s in sets if not s.startswith("demo.")]


def run(name: str, size: int, epochs: int, sets: list[str]) -> dict:
    changes, sets_cfg = demo_changes(sets)
    settings = api.demo_settings(**{"image_size": size, "epochs": epochs, "num_layers": 4,
                                    "hidden_dims": (128 * 2, 128 * 4),  # the paper's RLR
                                    **changes})
    data = WORK / f"data-{size}" / f"train{settings.n_train}"
    if not data.exists():
        api.make_demo_dataset(data, **settings.dataset)
    cfg = apply_overrides(api.demo_config(data, settings, device="cpu"),
                          [*sets_cfg, f"train.feature_cache={WORK / 'cache'}"])
    folder = WORK / f"run-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    tic = time.perf_counter()
    api.fit(cfg, folder, progress=False)
    train_s = time.perf_counter() - tic
    res = api.evaluate(folder, device="cpu", progress=False)
    calibration = json.loads((folder / "checkpoint.json").read_text())["calibration"]
    scores = json.loads((folder / "test_scores.json").read_text())["images"]
    return {"name": name, "size": size, "epochs": epochs, "overrides": sets,
            "calibration": cfg.train.calibration_images, "machine": cpu_model(),
            "quantile": cfg.train.threshold_quantile,
            "train_s": train_s, "categories": res["categories"], "mean": res["mean"],
            "decisions": res["decisions"]["categories"],
            "thresholds": {c: v["threshold"] for c, v in calibration["categories"].items()},
            "test_scores": [(s["category"], s["label"], s["score"]) for s in scores]}


def _decision_cell(d: dict) -> str:
    return f"{d['fp']}/{d['fp'] + d['tn']} / {d['fn']}/{d['fn'] + d['tp']}"


def render(rows: list[dict]) -> str:
    cats = sorted(rows[0]["categories"])
    head = ("| variant | px | epochs | overrides | calibration, quantile | train s | " + " | ".join(
        f"{c} I-/P-AUROC" for c in cats) + " | mean I-AUROC | " + " | ".join(
        f"{c} false alarms / misses" for c in cats) + " |")
    lines = [
        "# Choosing the demo's configuration",
        "",
        "RLR on Lite2 (ImageNet weights), the demo's generated products (32 normal training "
        "images per product unless `demo.n_train` says otherwise; 16 good and 16 defective "
        "test images), each product's threshold from normal images only: a held-out quarter "
        "of them (`held_out`) or the training images themselves (`training`), at the quantile "
        "shown (normal-tail rule). Train seconds on the machine of "
        "each row (`machine` in demo_configs.jsonl). Every variant tried is listed; the test "
        "images are the only labelled ones, so this choice was made on them.",
        "",
        head,
        "|---|---:|---:|---|---|---:|" + "---:|" * (2 * len(cats) + 1),
    ]
    for r in rows:
        aurocs = " | ".join(f"{100 * r['categories'][c]['i_auroc']:.1f} / "
                            f"{100 * r['categories'][c]['p_auroc']:.1f}" for c in cats)
        dec = " | ".join(_decision_cell(r["decisions"][c]) for c in cats)
        lines.append(f"| {r['name']} | {r['size']} | {r['epochs']} | "
                     f"{' '.join(r['overrides']) or '-'} | {r.get('calibration', 'held_out')}, "
                     f"{r.get('quantile', 0.99)} | "
                     f"{r['train_s']:.0f} | {aurocs} | "
                     f"{100 * r['mean']['i_auroc']:.1f} | {dec} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    name, size, epochs, *sets = argv
    store = HERE / "demo_configs.jsonl"
    row = run(name, int(size), int(epochs), sets)
    with store.open("a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    notes = HERE / "demo_notes.md"
    (HERE / "demo.md").write_text(render(rows) + (notes.read_text() if notes.exists() else ""))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
