"""Which defect-mask rule outlines defects best? Candidate rules measured on cached maps.

Today (`refad.inference.calibration`) a pixel is a defect pixel when the anomaly map is above
`pixel_threshold`: the calibration quantile (`train.threshold_quantile`, rule `normal_tail`)
of the normal calibration images' map MAXIMA. Maps are smoothed and a defect's peak is far
above that level, so the masks are blobs several times larger than the defects (issue 32).
This study scores every test image of a trained run once (the `Scorer` that `refad test` uses,
maps at the evaluated resolution, masks binarised at > 0.5 and resized exactly as
`refad.inference.evaluate` does), caches the maps, and measures each candidate rule on them:

* SegF1: pixel F1 over every test pixel of a category (TP / FP / FN summed over its good and
  defective test images, `refad.metrics.SegmentationCounter`), and the mean over categories;
* area ratio: mean over defective images of predicted defect area / true defect area.

Every rule is set from NORMAL images only: the run's own calibration images (the held-out
normals of `split_validation` with the run's seed, or the training images when the run
calibrates on them), re-scored here; today's threshold recomputed from them must equal the
checkpoint's `pixel_threshold` (checked). Each rule is a small self-contained numpy function
(`rule_*`) of one map, the category's normal statistics (`normal_stats`) and one parameter.

Selection criterion, fixed before any figure was looked at: the rule (with its parameter) of
highest (mean SegF1 on realmix-dev + mean SegF1 on the demo) / 2, among those that raise the
mean SegF1 of BOTH datasets over today's rule and keep the demo's mean area ratio below 3. The
one free parameter is therefore chosen on test images; every variant tried is reported.

Image decisions (score > the category's calibrated threshold) are not touched by any rule;
the script recomputes them from the cached scores, compares them with the run's metrics.json
when present, and counts, per rule, images whose mask disagrees with their decision.

    python benchmarks/mask_rules.py --run RUN_A --root ROOT_A --name A \
        [--run RUN_B --root ROOT_B --name B] --json benchmarks/mask_rules.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from machine import cpu_model
from scipy import ndimage

# ---------------------------------------------------------------------------------------------
# Normal statistics and the candidate rules (pure numpy; nothing here sees a test image)
# ---------------------------------------------------------------------------------------------

PIXEL_QUANTILES = (0.999, 0.9999, 0.99999)


def normal_tail_quantile(values: np.ndarray, quantile: float) -> float:
    """refad's `normal_tail` estimate of the `quantile` of `values`: the larger of the sample
    quantile and mean + z * std (z the standard normal's `quantile` point, std with ddof=1)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    sample = float(np.quantile(values, quantile))
    if values.size < 2:
        return sample
    return max(sample, float(values.mean() + NormalDist().inv_cdf(quantile) * values.std(ddof=1)))


def normal_stats(normal_maps: np.ndarray, quantile: float = 0.99) -> dict[str, Any]:
    """What every rule may know, from one category's NORMAL calibration maps (N, H, W):

    * `t0`: today's pixel threshold, the `normal_tail` `quantile` of the maps' maxima;
    * `floor`: the median over the normal maps of each map's median pixel (refad's `map_floor`,
      the level of a normal background);
    * `pixel_q`: {q: the empirical q-quantile of all normal pixels} for q in PIXEL_QUANTILES.
    """
    maps = np.asarray(normal_maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    return {
        "t0": normal_tail_quantile(flat.max(axis=1), quantile),
        "floor": float(np.median(np.median(flat, axis=1))),
        "pixel_q": {q: float(np.quantile(flat, q)) for q in PIXEL_QUANTILES},
    }


def rule_today(m: np.ndarray, s: dict[str, Any], _: float | None = None) -> np.ndarray:
    """Today's rule: defect pixels are those above t0 (quantile of normal map maxima)."""
    return m > s["t0"]


def rule_pixel_quantile(m: np.ndarray, s: dict[str, Any], q: float) -> np.ndarray:
    """Defect pixels are those above the q-quantile of all normal PIXELS of the category."""
    return m > s["pixel_q"][q]


def rule_multiple(m: np.ndarray, s: dict[str, Any], k: float) -> np.ndarray:
    """Defect pixels are those above k * t0."""
    return m > k * s["t0"]


def rule_floor_multiple(m: np.ndarray, s: dict[str, Any], k: float) -> np.ndarray:
    """Defect pixels are those above floor + k * (t0 - floor): k times today's margin over the
    normal background level (k = 1 is today's rule; maps with an offset stay comparable)."""
    return m > s["floor"] + k * (s["t0"] - s["floor"])


def rule_peak(m: np.ndarray, s: dict[str, Any], r: float) -> np.ndarray:
    """Hysteresis from the peak: when the map's max exceeds t0, defect pixels are those above
    max(t0, r * max); otherwise none."""
    t0, peak = s["t0"], float(m.max())
    if peak <= t0:
        return np.zeros(m.shape, dtype=bool)
    return m > max(t0, r * peak)


def rule_hysteresis(m: np.ndarray, s: dict[str, Any], r: float) -> np.ndarray:
    """Two-level hysteresis: the connected components of (map > t0) that contain a pixel above
    the high level max(t0, r * max) (kept whole, at the low level t0)."""
    t0, peak = s["t0"], float(m.max())
    low = m > t0
    if peak <= t0:
        return low
    labels, _ = ndimage.label(low)
    keep = np.unique(labels[m > max(t0, r * peak)])
    return np.isin(labels, keep[keep > 0])


def rule_peak_floor(m: np.ndarray, s: dict[str, Any], r: float) -> np.ndarray:
    """Peak-relative above the normal background: when the map's max exceeds t0, defect pixels
    are those above max(t0, floor + r * (max - floor)); otherwise none."""
    t0, floor, peak = s["t0"], s["floor"], float(m.max())
    if peak <= t0:
        return np.zeros(m.shape, dtype=bool)
    return m > max(t0, floor + r * (peak - floor))


def rule_peak_log(m: np.ndarray, s: dict[str, Any], r: float) -> np.ndarray:
    """Between today's level and the peak on a log scale (over the normal background): when
    max > t0, defect pixels are those above floor + (t0 - floor) * ((max - floor) /
    (t0 - floor)) ** r (r = 0: today's rule, r = 1: only the peak)."""
    t0, floor, peak = s["t0"], s["floor"], float(m.max())
    if peak <= t0:
        return np.zeros(m.shape, dtype=bool)
    base = max(t0 - floor, 1e-12)
    return m > floor + base * ((peak - floor) / base) ** r


def rule_component_floor(m: np.ndarray, s: dict[str, Any], r: float) -> np.ndarray:
    """Per-defect peak-relative level: each connected component of (map > t0) keeps its pixels
    above floor + r * (its own max - floor) (never below t0), so a weak second defect is
    outlined at its own level instead of vanishing under the strongest one's."""
    t0, floor = s["t0"], s["floor"]
    low = m > t0
    if not low.any():
        return low
    labels, n = ndimage.label(low)
    peaks = np.asarray(ndimage.maximum(m, labels, index=np.arange(1, n + 1)), dtype=np.float64)
    levels = np.concatenate([[np.inf], np.maximum(t0, floor + r * (peaks - floor))])
    return low & (m > levels[labels])


RULES: dict[str, tuple[Callable[..., np.ndarray], tuple[Any, ...], str]] = {
    "today": (rule_today, (None,), "map > t0"),
    "pixel_quantile": (rule_pixel_quantile, PIXEL_QUANTILES, "map > q-quantile of normal pixels"),
    "multiple": (rule_multiple, (1.5, 2.0, 3.0), "map > k * t0"),
    "floor_multiple": (rule_floor_multiple, (1.5, 2.0, 3.0), "map > floor + k (t0 - floor)"),
    "peak": (rule_peak, (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95), "map > max(t0, r * max)"),
    "hysteresis": (rule_hysteresis, (0.3, 0.5, 0.7, 0.9),
                   "components of map > t0 holding a pixel > max(t0, r * max)"),
    "peak_floor": (rule_peak_floor, (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95),
                   "map > max(t0, floor + r (max - floor))"),
    "peak_log": (rule_peak_log, (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                 "map > floor + (t0 - floor) ((max - floor) / (t0 - floor))^r"),
    "component_floor": (rule_component_floor, (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95),
                        "per component of map > t0: > max(t0, floor + r (its max - floor))"),
}

# ---------------------------------------------------------------------------------------------
# Maps: scored once through refad (its Scorer, datasets and splits), cached as .npz
# ---------------------------------------------------------------------------------------------


def _calibration_samples(config: Any, data: Any) -> list[Any]:
    """The normal images the run calibrated on, chosen exactly as `refad.training.train`."""
    from refad.data import load_split, split_validation, validation_split

    samples = load_split(data, "train")
    train, held = split_validation(samples, config.train.val_fraction, config.train.seed)
    which = config.calibration_set
    if which == "held_out":
        return held
    if which == "validation":
        return list(validation_split(data) or [])
    return train


def _score(scorer: Any, samples: list[Any], run: Any, batch: int) -> dict[str, np.ndarray]:
    """Maps (N, H, W) float32, masks (N, H, W) bool, labels and image scores of `samples`,
    through the dataset and scorer `refad.inference.evaluate` uses."""
    import torch
    from torch.utils.data import DataLoader

    from refad.data import ImageDataset

    dataset = ImageDataset(samples, run.config.data.image_size, run.extractor.mean,
                           run.extractor.std)
    out: dict[str, list[np.ndarray]] = {"maps": [], "masks": [], "labels": [], "scores": []}
    for b in DataLoader(dataset, batch_size=batch, num_workers=0):
        scores = scorer.images(b["image"])
        out["maps"].append(scores.maps.float().cpu().numpy().reshape(len(b["label"]),
                                                                      *scores.maps.shape[-2:]))
        out["scores"].append(scores.image.float().cpu().numpy())
        out["masks"].append((b["mask"][:, 0] > 0.5).numpy())
        out["labels"].append(torch.as_tensor(b["label"]).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def load_maps(run_dir: Path, root: str, cache: Path, batch: int
              ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """(meta, arrays): per category the normal calibration maps and the test maps / masks /
    labels / scores, and the checkpoint's calibration. Scored once and cached under `cache`."""
    ckpt = (run_dir / "checkpoint.json").read_bytes()
    key = hashlib.sha256(ckpt + str(run_dir.resolve()).encode() + root.encode()).hexdigest()[:16]
    folder = cache / f"{run_dir.name}-{key}"
    index = folder / "index.json"
    if not index.exists():
        _score_run(run_dir, root, folder, batch)
    meta = json.loads(index.read_text())
    arrays = {c: dict(np.load(folder / f"{c}.npz")) for c in meta["categories"]}
    return meta, arrays


def _score_run(run_dir: Path, root: str, folder: Path, batch: int) -> None:
    import torch

    from refad.data import by_category, load_split
    from refad.inference.scorer import Scorer
    from refad.runs import open_run

    torch.manual_seed(0)
    run = open_run(run_dir, "cpu")
    data = run.config.data.model_copy(update={"root": root})
    calib = by_category(_calibration_samples(run.config, data))
    tests = by_category(load_split(data, "test"))
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"run": str(run_dir.resolve()), "root": root,
                            "method": run.config.method, "backbone": run.config.backbone.name,
                            "image_size": run.config.data.image_size,
                            "calibration_set": run.config.calibration_set, "categories": {}}
    tic = time.perf_counter()
    for category, group in tests.items():
        unit = run.unit_for(category)
        model, ckmeta = run.model(unit)
        scorer = Scorer(model, run.device, run.extractor)
        decided = ckmeta.unit_calibration(unit).for_category(category)
        normal = _score(scorer, calib[category], run, batch)
        test = _score(scorer, group, run, batch)
        np.savez(folder / f"{category}.npz", normal_maps=normal["maps"],
                 normal_scores=normal["scores"], **test)
        meta["categories"][category] = {
            "threshold": decided.threshold, "pixel_threshold": decided.pixel_threshold,
            "calibration_images": len(calib[category]), "test_images": len(group),
        }
        print(f"  scored {category}: {len(calib[category])} normal + {len(group)} test "
              f"({time.perf_counter() - tic:.0f} s)", file=sys.stderr)
    meta["scoring_seconds"] = time.perf_counter() - tic
    (folder / "index.json").write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def measure(rule: Callable[..., np.ndarray], param: Any, cat: dict[str, np.ndarray],
            stats: dict[str, Any], decisions: np.ndarray) -> dict[str, Any]:
    """SegF1 / precision / recall / area ratio of one rule on one category (refad's counter, on
    the rule's 0/1 masks at 0.5), and the images whose mask disagrees with their decision."""
    from refad.metrics import SegmentationCounter

    counter, gated = SegmentationCounter(0.5), SegmentationCounter(0.5)
    predicted = np.stack([rule(m, stats, param) for m in cat["maps"]])
    counter.update(predicted.astype(np.float32), cat["masks"], cat["labels"])
    out = counter.compute()
    # the same masks, drawn only on images decided anomalous (a variant, not the rule itself)
    gated.update((predicted & decisions[:, None, None]).astype(np.float32), cat["masks"],
                 cat["labels"])
    g = gated.compute()
    flagged = predicted.reshape(len(predicted), -1).any(axis=1)
    return {k: out[k] for k in ("seg_f1", "seg_precision", "seg_recall", "area_ratio")} | {
        "seg_f1_if_decided": g["seg_f1"], "area_ratio_if_decided": g["area_ratio"],
        "mask_on_normal_decision": int((flagged & ~decisions).sum()),
        "no_mask_on_anomalous_decision": int((~flagged & decisions).sum()),
        "good_images_with_mask": int((flagged & (cat["labels"] == 0)).sum()),
    }


def _nanmean(values: list[float]) -> float:
    """Mean over the categories where the value is defined (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def check_decisions(name: str, run_dir: Path, maps: dict[str, Any]) -> dict[str, Any]:
    """Image decisions recomputed from the cached scores, against the run's metrics.json."""
    recorded = {}
    path = run_dir / "metrics.json"
    if path.exists():
        recorded = json.loads(path.read_text()).get("decisions", {}).get("categories", {})
    out = {}
    for c, cat in maps["categories"].items():
        t = maps["_meta"][c]["threshold"]
        d = cat["scores"] > t
        lab = cat["labels"] == 1
        mine = {"tp": int((d & lab).sum()), "fp": int((d & ~lab).sum()),
                "tn": int((~d & ~lab).sum()), "fn": int((~d & lab).sum())}
        theirs = {k: recorded[c][k] for k in mine} if c in recorded else None
        out[c] = {"recomputed": mine, "metrics_json": theirs,
                  "same": theirs is None or theirs == mine}
        if theirs is not None and theirs != mine:
            print(f"WARNING {name}/{c}: decisions {mine} differ from metrics.json {theirs}",
                  file=sys.stderr)
    return out


def evaluate(name: str, run_dir: Path, root: str, cache: Path, batch: int) -> dict[str, Any]:
    """Every rule of RULES on one run's cached maps, per category and mean."""
    index, arrays = load_maps(run_dir, root, cache, batch)
    maps = {"categories": arrays, "_meta": index["categories"]}
    train = json.loads((run_dir / "config.json").read_text())["train"]
    if train["threshold_rule"] != "normal_tail":
        raise SystemExit(f"{run_dir}: threshold_rule {train['threshold_rule']!r}; this study "
                         "recomputes today's threshold with normal_tail only")
    stats = {}
    for c, cat in maps["categories"].items():
        stats[c] = normal_stats(cat["normal_maps"], train["threshold_quantile"])
        stored = index["categories"][c]["pixel_threshold"]
        if not math.isclose(stats[c]["t0"], stored, rel_tol=1e-4):
            print(f"WARNING {name}/{c}: t0 recomputed {stats[c]['t0']:.5f} != checkpoint "
                  f"pixel_threshold {stored:.5f}", file=sys.stderr)
    decisions = check_decisions(name, run_dir, maps)
    results: dict[str, Any] = {}
    for family, (fn, params, _) in RULES.items():
        for p in params:
            label = family if p is None else f"{family}({p:g})"
            per_cat = {}
            for c, cat in maps["categories"].items():
                d = cat["scores"] > index["categories"][c]["threshold"]
                per_cat[c] = measure(fn, p, cat, stats[c], d)
            mean = {k: _nanmean([v[k] for v in per_cat.values()])
                    for k in ("seg_f1", "seg_precision", "seg_recall", "area_ratio",
                              "seg_f1_if_decided", "area_ratio_if_decided")}
            results[label] = {"family": family, "param": p, "categories": per_cat, "mean": mean}
        print(f"  {name}: {family} done", file=sys.stderr)
    return {
        "run": index["run"], "root": root, "method": index["method"],
        "backbone": index["backbone"], "image_size": index["image_size"],
        "calibration_set": index["calibration_set"],
        "threshold_quantile": train["threshold_quantile"],
        "calibration_images": {c: v["calibration_images"] for c, v in index["categories"].items()},
        "test_images": {c: v["test_images"] for c, v in index["categories"].items()},
        "scoring_seconds": index.get("scoring_seconds"),
        "normal_stats": {c: {"t0": s["t0"], "floor": s["floor"],
                             "pixel_q": {str(q): v for q, v in s["pixel_q"].items()},
                             "checkpoint_pixel_threshold":
                                 index["categories"][c]["pixel_threshold"]}
                         for c, s in stats.items()},
        "decisions": decisions,
        "rules": results,
    }


def choose(datasets: dict[str, Any]) -> dict[str, Any]:
    """The criterion of the module doc, applied to every rule measured on every dataset."""
    names = list(datasets)
    today = {n: datasets[n]["rules"]["today"]["mean"]["seg_f1"] for n in names}
    ranked = []
    for label in datasets[names[0]]["rules"]:
        f1 = {n: datasets[n]["rules"][label]["mean"]["seg_f1"] for n in names}
        demo_area = datasets[names[-1]]["rules"][label]["mean"]["area_ratio"]
        eligible = all(f1[n] > today[n] for n in names) and demo_area < 3
        ranked.append((float(np.mean(list(f1.values()))), label, eligible))
    ranked.sort(reverse=True)
    best = next((label for _, label, ok in ranked if ok), None)
    return {"criterion": "highest mean over datasets of mean SegF1, among rules raising every "
                         "dataset's mean SegF1 over today's and with the last dataset's (demo) "
                         "mean area ratio < 3",
            "chosen": best, "ranking": [{"rule": r, "score": s, "eligible": e}
                                        for s, r, e in ranked]}


def markdown(result: dict[str, Any]) -> str:
    """The tables of the report."""
    data = result["datasets"]
    names = list(data)
    lines = ["| rule | " + " | ".join(f"SegF1 {n}" for n in names) + " | mean | "
             + " | ".join(f"area ratio {n}" for n in names) + " |",
             "|---|" + "---:|" * (2 * len(names) + 1)]
    for label in data[names[0]]["rules"]:
        f1 = [data[n]["rules"][label]["mean"]["seg_f1"] for n in names]
        ar = [data[n]["rules"][label]["mean"]["area_ratio"] for n in names]
        mark = "**" if label in (result["choice"]["chosen"], "today") else ""
        lines.append(f"| {mark}{label}{mark} | " + " | ".join(f"{100 * v:.1f}" for v in f1)
                     + f" | {100 * np.mean(f1):.1f} | " + " | ".join(f"{v:.2f}" for v in ar)
                     + " |")
    for n in names:
        cats = list(data[n]["test_images"])
        lines += ["", f"### {n}: per category (SegF1 % / area ratio; images with a mask: good "
                      "test images / decided-normal images)", "",
                  "| rule | " + " | ".join(cats) + " | mean |",
                  "|---|" + "---:|" * (len(cats) + 1)]
        for label, r in data[n]["rules"].items():
            cells = [f"{100 * r['categories'][c]['seg_f1']:.1f} / "
                     f"{r['categories'][c]['area_ratio']:.2f} "
                     f"({r['categories'][c]['good_images_with_mask']}/"
                     f"{r['categories'][c]['mask_on_normal_decision']})" for c in cats]
            lines.append(f"| {label} | " + " | ".join(cells)
                         + f" | {100 * r['mean']['seg_f1']:.1f} / {r['mean']['area_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--run", action="append", required=True, help="a trained run folder")
    ap.add_argument("--root", action="append", required=True,
                    help="its dataset root (one per --run, same order)")
    ap.add_argument("--name", action="append", help="its name in the tables (one per --run)")
    ap.add_argument("--cache", default="/tmp/mask_rules_cache", help="where maps are cached")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None, help="write the full results here")
    args = ap.parse_args(argv)
    names = args.name or [Path(r).name for r in args.run]
    if not len(args.run) == len(args.root) == len(names):
        ap.error("give one --root (and one --name, if any) per --run")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    datasets = {n: evaluate(n, Path(r), root, cache, args.batch)
                for n, r, root in zip(names, args.run, args.root, strict=True)}
    result = {"machine": f"{cpu_model()}, {platform.system()} {platform.machine()}",
              "command": "python benchmarks/mask_rules.py " + " ".join(sys.argv[1:]),
              "rules": {k: {"params": list(v[1]), "definition": v[2]} for k, v in RULES.items()},
              "datasets": datasets}
    result["choice"] = choose(datasets)
    print(markdown(result))
    print(f"\nchosen: {result['choice']['chosen']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
