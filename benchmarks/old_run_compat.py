"""A run folder written by an older refad still opens, tests, predicts, exports and serves with
the current code, with the scores it had.

Give it the demo folder an older refad wrote (`refad demo --out OLD` with that version): the
run (OLD/run), its data (OLD/data) and the predictions that version wrote for the defective
test images (OLD/heatmaps/CATEGORY/predictions.json). A copy of the run is then put through
`refad test`, `refad predict --run`, `refad export` + `refad predict --model`, and
`refad serve` (both backends), and every score is compared with the old ones. Writes
benchmarks/old_run_compat.md.

    python benchmarks/old_run_compat.py --old /tmp/olddemo --version 4f93bb1
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
REFAD = [sys.executable, "-m", "refad"]


def refad(*args: str) -> str:
    proc = subprocess.run([*REFAD, *args], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"refad {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def old_predictions(old: Path) -> dict[str, dict]:
    """Path -> the old version's prediction row, over every category's predictions.json."""
    rows = {}
    for file in sorted((old / "heatmaps").glob("*/predictions.json")):
        for row in json.loads(file.read_text())["predictions"]:
            rows[row["path"]] = row
    return rows


def compare_rows(old: dict[str, dict], new_file: Path) -> dict:
    """Largest relative score difference, and decision / region mismatches."""
    worst, flips, regions = 0.0, 0, 0
    new = {r["path"]: r for r in json.loads(new_file.read_text())["predictions"]}
    for path, row in old.items():
        got = new[path]
        worst = max(worst, abs(got["score"] - row["score"]) / max(abs(row["score"]), 1e-12))
        flips += got["anomalous"] != row["anomalous"]
        regions += len(got.get("regions", [])) != len(row.get("regions", []))
    return {"images": len(old), "max_rel": worst, "flips": flips, "region_count_differs": regions}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_scores(flag: str, target: Path, images: list[Path], category: str) -> list[float]:
    port = free_port()
    server = subprocess.Popen([*REFAD, "serve", flag, str(target), "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        scores = []
        for image in images:
            files = [("image", (image.name, image.read_bytes(), "image/png"))]
            reply = httpx.post(url + "/v1/predict", files=files, data={"category": category},
                               timeout=120)
            reply.raise_for_status()
            scores.append(reply.json()["results"][0]["score"])
        return scores
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the older demo folder")
    parser.add_argument("--version", required=True, help="the commit that wrote it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refad-compat-"))
    run = work / "run"
    shutil.copytree(args.old / "run", run)
    old_file = args.old / "run" / "test_scores.json"
    old_scores = {r["image"]: r["score"] for r in json.loads(old_file.read_text())["images"]}
    refad("test", "--run", str(run), "--no-report", "--device", "cpu")
    new_scores = {r["image"]: r["score"]
                  for r in json.loads((run / "test_scores.json").read_text())["images"]}
    test_rel = max(abs(new_scores[k] - v) / abs(v) for k, v in old_scores.items())
    old_metrics = json.loads((args.old / "run" / "metrics.json").read_text())["mean"]
    new_metrics = json.loads((run / "metrics.json").read_text())["mean"]
    metric_diff = max(abs(new_metrics[k] - old_metrics[k]) for k in old_metrics
                      if isinstance(old_metrics[k], float))

    old_rows = old_predictions(args.old)
    by_category: dict[str, list[Path]] = {}
    for row in old_rows.values():
        by_category.setdefault(row["category"], []).append(Path(row["path"]))
    results = {}
    exported = work / "exported"
    refad("export", "--run", str(run), "--out", str(exported))
    for flag, target, key in (("--run", run, "predict --run"),
                              ("--model", exported, "predict --model (ONNX)")):
        merged: dict = {"images": 0, "max_rel": 0.0, "flips": 0, "region_count_differs": 0}
        for category, images in by_category.items():
            out = work / f"pred-{flag.strip('-')}-{category}"
            refad("predict", flag, str(target), *map(str, images), "--out", str(out),
                  "--category", category)
            part = compare_rows({str(p): old_rows[str(p)] for p in images},
                                out / "predictions.json")
            merged = {k: (max if k == "max_rel" else sum)((merged[k], part[k])) for k in merged}
        results[key] = merged
    for flag, target, key in (("--run", run, "serve --run"),
                              ("--model", exported, "serve --model (ONNX)")):
        worst, count = 0.0, 0
        for category, images in by_category.items():
            picked = images[:4]
            for image, score in zip(picked, served_scores(flag, target, picked, category),
                                    strict=True):
                old = old_rows[str(image)]["score"]
                worst = max(worst, abs(score - old) / abs(old))
                count += 1
        results[key] = {"images": count, "max_rel": worst}

    lines = [
        "# A run folder written before the restructuring, opened by today's code",
        "",
        f"The demo run written by refad {args.version} (`refad demo`, unified RLR on Lite2) was "
        "copied and put through every command of the current code on this machine's CPU. "
        "Scores are compared with the ones that version wrote itself.",
        "",
        f"Reproduce: `python benchmarks/old_run_compat.py --old OLD --version {args.version}`, "
        f"where OLD is a `refad demo --out OLD` folder written by {args.version}.",
        "",
        "| command | images | largest relative score difference | decision flips | "
        "regions differ |",
        "|---|---:|---:|---:|---:|",
        f"| test (test_scores.json) | {len(old_scores)} | {test_rel:.1e} | - | - |",
    ]
    for key, r in results.items():
        lines.append(f"| {key} | {r['images']} | {r['max_rel']:.1e} | {r.get('flips', '-')} | "
                     f"{r.get('region_count_differs', '-')} |")
    lines += ["", f"Largest difference of a mean metric in metrics.json: {metric_diff:.1e}."]
    (HERE / "old_run_compat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
