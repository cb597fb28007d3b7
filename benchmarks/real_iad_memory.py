"""Peak memory of evaluating a Real-IAD-shaped test set with refad's streaming metrics.

Real-IAD users report evaluation needing over 200 GB of RAM: tools that keep every anomaly
map (150,000 images x 5 views' worth of maps) before computing pixel metrics. refad's
`refad test` evaluates one object at a time and streams every batch into
`MetricAccumulator` (2 bytes per normal pixel in exact mode, fixed histograms in binned
mode) and `SegmentationCounter` (a few integers), keeps one row of numbers per view, and
computes the per-sample results from those rows (`refad.inference.multiview`).

This script drives exactly those objects with generated batches shaped like Real-IAD views at
the method's map size (default 256 x 256: RLR's input size), for a few view counts of one
object, each in its own subprocess (peak RSS does not mix), and extrapolates linearly to a
Real-IAD object and to all 30 (objects are evaluated one after another, so the peak is the
largest object's, plus the per-view rows of every object).

    python benchmarks/real_iad_memory.py                 # writes real_iad_memory.md / .json
    python benchmarks/real_iad_memory.py --counts 200 400 --size 128 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_model  # noqa: E402

# Real-IAD (Wang et al., CVPR 2024): 30 objects, 151,050 images (5 views per sample).
REAL_IAD_IMAGES = 151_050
REAL_IAD_OBJECTS = 30
PER_OBJECT = REAL_IAD_IMAGES / REAL_IAD_OBJECTS  # 5,035 views on average
WORST_OBJECT = 10_000  # a test split of 10,000 views in one object: twice the average
DEFECTIVE_VIEWS = 0.34  # Real-IAD: 51,329 of 151,050 images show a defect
DEFECT_AREA = 0.01  # fraction of a defective view's pixels (defects are small)
BATCH = 16  # refad test's default batch size
BOUND_BYTES = 2 * 1024**3  # the stated bound for the whole evaluation (exact mode)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(views: int, size: int, mode: str, seed: int = 0) -> dict:
    """Evaluate one generated object of `views` views, as `refad test` does per category."""
    from refad.inference.multiview import sample_results
    from refad.metrics import MetricAccumulator, SegmentationCounter

    rng = np.random.default_rng(seed)
    acc = MetricAccumulator(mode=mode)
    seg = SegmentationCounter(2.5)
    rows: list[dict] = []
    side = max(2, int(size * DEFECT_AREA**0.5))
    base_rss = _rss_bytes()
    tic = time.perf_counter()
    for start in range(0, views, BATCH):
        n = min(BATCH, views - start)
        maps = rng.gamma(2.0, 0.5, (n, size, size)).astype(np.float32)
        masks = np.zeros((n, size, size), bool)
        labels = (rng.random(n) < DEFECTIVE_VIEWS).astype(np.int64)
        for i in np.flatnonzero(labels):
            top, left = rng.integers(0, size - side, 2)
            masks[i, top:top + side, left:left + side] = True
            maps[i, top:top + side, left:left + side] += 3.0
        scores = maps.reshape(n, -1).max(1)
        acc.update(scores, labels, maps, masks)
        seg.update(maps, masks, labels)
        for i in range(n):  # the row `refad test` keeps per view (paths of Real-IAD's length)
            k = start + i
            folder = f"/data/Real-IAD/realiad_1024/audiojack/NG/AK/S{k // 5:04d}"
            rows.append({"category": "audiojack",
                         "image": f"{folder}/audiojack_{k // 5:04d}_NG_C{k % 5 + 1}_"
                                  f"20231021130039.jpg",
                         "mask": None, "defect": "good", "label": int(labels[i]),
                         "score": float(scores[i])})
        del maps, masks
    state = acc.state_bytes
    streamed_rss = _rss_bytes()
    metrics = acc.compute()
    segf1 = seg.compute()
    per_sample = sample_results(rows, {"audiojack": 3.0})
    seconds = time.perf_counter() - tic
    return {
        "views": views, "size": size, "mode": mode, "seconds": seconds,
        "state_bytes": state, "peak_rss_bytes": _rss_bytes() - base_rss,
        "streaming_rss_bytes": streamed_rss - base_rss,
        "rows_bytes_estimate": _rows_bytes(rows),
        "p_auroc": metrics["p_auroc"], "seg_f1": segf1["seg_f1"],
        "samples": per_sample["categories"]["audiojack"]["samples"],
    }


def _rows_bytes(rows: list[dict]) -> int:
    """Bytes held by the per-view rows (the dicts, their keys' values and strings)."""
    if not rows:
        return 0
    one = rows[len(rows) // 2]
    per = sys.getsizeof(one) + sum(sys.getsizeof(v) for v in one.values())
    return per * len(rows)


def run_one(views: int, size: int, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", str(views), "--size", str(size),
                          "--mode", mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(points: list[dict], key: str) -> tuple[float, float]:
    """Least-squares a + b * views of `key` over the measured points."""
    x = np.array([p["views"] for p in points], float)
    y = np.array([p[key] for p in points], float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def mib(x: float) -> str:
    return f"{x / 1024**2:,.0f} MiB"


def report(results: list[dict], size: int) -> str:
    lines = [
        "# Real-IAD evaluation memory (streaming metrics)",
        "",
        f"Generated with `python benchmarks/real_iad_memory.py` on {cpu_model()} "
        f"({os.cpu_count()} cores seen, Python {platform.python_version()}).",
        "",
        f"Each row evaluates one generated object of N views at {size} x {size} map pixels "
        f"(the method's map size), {DEFECTIVE_VIEWS:.0%} of views defective with a defect of "
        f"{DEFECT_AREA:.0%} of the view, batches of {BATCH}, through refad's "
        "`MetricAccumulator` (the seven metrics), `SegmentationCounter` (SegF1, area ratio), "
        "one score row per view and the per-sample results (max over 5 views), in a fresh "
        "process. Peak RSS is the growth of the process's peak resident memory from just "
        "before the first batch (so it counts the metric state, the batch in flight, the "
        "rows and `compute()`'s work, not the interpreter and imports); state is the "
        "accumulator's own figure before `compute()`.",
        "",
        "| mode | views | map pixels | state | peak RSS growth | per-view rows | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['mode']} | {r['views']:,} | {r['views'] * size * size:,} | "
                     f"{mib(r['state_bytes'])} | {mib(r['peak_rss_bytes'])} | "
                     f"{mib(r['rows_bytes_estimate'])} | {r['seconds']:.1f} |")
    lines += ["", "## Extrapolated to Real-IAD", "",
              f"Real-IAD: {REAL_IAD_IMAGES:,} images of {REAL_IAD_OBJECTS} objects "
              f"({PER_OBJECT:,.0f} views per object on average; the whole object is taken as "
              f"its test split, an upper bound). `refad test` evaluates objects one after "
              "another and drops each object's accumulator before the next, so the peak is "
              "the largest object's plus the score rows of every view (kept for the report). "
              f"Linear fit of peak RSS growth over the measured N; worst object = "
              f"{WORST_OBJECT:,} views.", "",
              "| mode | per view (fit) | average object | worst object | + rows of all "
              f"{REAL_IAD_IMAGES:,} views | all 30 objects (peak) | bound |",
              "|---|---:|---:|---:|---:|---:|---|"]
    rows_per_view = np.mean([r["rows_bytes_estimate"] / r["views"] for r in results])
    extrapolated = {}
    for mode in sorted({r["mode"] for r in results}):
        points = [r for r in results if r["mode"] == mode]
        a, b = fit(points, "peak_rss_bytes")
        floor = max(p["peak_rss_bytes"] for p in points)  # a flat fit never goes below it
        avg, worst = max(floor, a + b * PER_OBJECT), max(floor, a + b * WORST_OBJECT)
        all_rows = rows_per_view * REAL_IAD_IMAGES
        total = worst + all_rows
        extrapolated[mode] = {"intercept": a, "per_view": b, "average_object": avg,
                              "worst_object": worst, "rows_all": all_rows, "total": total}
        ok = "within" if total <= BOUND_BYTES else "ABOVE"
        lines.append(f"| {mode} | {b / 1024:,.0f} KiB | {mib(avg)} | {mib(worst)} | "
                     f"{mib(all_rows)} | {mib(total)} | {ok} {BOUND_BYTES / 1024**3:.0f} GiB |")
    held = REAL_IAD_IMAGES * size * size * 5  # float32 map + bool mask per view
    lines += ["", f"For comparison, holding every map and mask of Real-IAD at {size} px (float32 "
              f"+ bool) takes {held / 1024**3:,.0f} GiB; at 1024 px "
              f"{REAL_IAD_IMAGES * 1024 * 1024 * 5 / 1024**3:,.0f} GiB."]
    return "\n".join(lines) + "\n", extrapolated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--counts", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", default="exact")
    parser.add_argument("--modes", nargs="+", default=["exact", "binned"])
    parser.add_argument("--out", type=Path, default=HERE / "real_iad_memory.md")
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.size, args.mode)))
        return
    results = [run_one(n, args.size, mode) for mode in args.modes for n in args.counts]
    text, extrapolated = report(results, args.size)
    from machine import kept_notes

    args.out.write_text(text + ("\n" + kept_notes(args.out) if kept_notes(args.out) else ""))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"size": args.size, "results": results, "extrapolated": extrapolated,
         "bound_bytes": BOUND_BYTES}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
