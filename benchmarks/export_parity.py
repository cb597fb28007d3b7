"""Exported graph against its run on every test image: `refad predict --run` and
`refad predict --model` (onnxruntime) per category, predictions.json compared image by image.

    python benchmarks/export_parity.py --run runs/realmix/patchcore-e1-b32 \
        --root ../shared/data/realmix --out benchmarks/export_parity.md

The export is made by `refad export --format onnx` (which runs its own parity check on a few
normal images first); this script then checks the whole test split: the largest relative score
difference, decision flips and defect-mask area differences. Text from "## Reading these
figures" on is kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model, kept_notes


def refad(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "refad", *args], check=True,
                   stdout=subprocess.DEVNULL)


def by_path(summary: Path) -> dict[str, dict]:
    return {p["path"]: p for p in json.loads(summary.read_text())["predictions"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--work", type=Path, default=Path("runs/export-parity"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/export_parity.md"))
    args = p.parse_args()
    if not args.root.is_dir():
        print(f"data not found at {args.root}; nothing to do", file=sys.stderr)
        return 2
    shutil.rmtree(args.work, ignore_errors=True)
    exported = args.work / "onnx"
    tic = time.perf_counter()
    refad("export", "--run", str(args.run), "--format", "onnx", "--out", str(exported))
    export_s = time.perf_counter() - tic
    meta = json.loads((exported / "refad-deploy.json").read_text())
    rows, totals = [], {"images": 0, "flips": 0, "worst": 0.0}
    for category in sorted(d.name for d in args.root.iterdir() if (d / "test").is_dir()):
        inputs = str(args.root / category / "test")
        torch_out, onnx_out = args.work / "run" / category, args.work / "model" / category
        tic = time.perf_counter()
        refad("predict", "--run", str(args.run), inputs, "--category", category,
              "--out", str(torch_out))
        run_s = time.perf_counter() - tic
        tic = time.perf_counter()
        refad("predict", "--model", str(exported), inputs, "--category", category,
              "--out", str(onnx_out))
        model_s = time.perf_counter() - tic
        a, b = by_path(torch_out / "predictions.json"), by_path(onnx_out / "predictions.json")
        assert a.keys() == b.keys(), category
        worst = max(abs(a[k]["score"] - b[k]["score"]) / abs(a[k]["score"]) for k in a)
        flips = sum(a[k]["anomalous"] != b[k]["anomalous"] for k in a)
        area = max(abs((a[k]["defect_pixels"] or 0) - (b[k]["defect_pixels"] or 0)) for k in a)
        rows.append(f"| {category} | {len(a)} | {worst:.2e} | {flips} | {area} | "
                    f"{run_s:.0f} | {model_s:.0f} |")
        totals["images"] += len(a)
        totals["flips"] += flips
        totals["worst"] = max(totals["worst"], worst)
    checks = {unit: entry["parity"] for unit, entry in meta["units"].items()}
    lines = [
        "# Export parity on every test image\n",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {cpu_model()}. Run: `{args.run}` (method {meta['method']}); export: ONNX "
        f"fp32 in {export_s:.0f} s; its own check on normal images: `{json.dumps(checks)}`.\n",
        "| category | images | largest relative score difference | decision flips | largest "
        "defect-area difference (px) | predict --run s | predict --model s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| **all** | {totals['images']} | {totals['worst']:.2e} | {totals['flips']} | | | |",
        "",
    ]
    notes = kept_notes(args.out)
    args.out.write_text("\n".join(lines) + "\n" + notes)
    print(args.out.read_text())
    return 0 if totals["flips"] == 0 and totals["worst"] <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
