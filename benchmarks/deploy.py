"""Deploy paths side by side on this machine: PyTorch eager, onnxruntime fp32, OpenVINO fp32,
fp16, bf16 and int8, for a Lite2 RLR at 256 px on realmix.

    python benchmarks/deploy.py --root ../shared/data/realmix            # trains 1 epoch first
    python benchmarks/deploy.py --root ../shared/data/realmix --run runs/rlr
    python benchmarks/deploy.py --root ../shared/data/realmix --timing-only   # re-time only

`--timing-only` reuses the run, the exports and every path's test-set maps and scores of the
last full invocation on the same `--work` folder and measures speed and memory again (for a
machine that was busy during the full run).

Each path runs in its own process (the deploy ones without torch), so peak RSS is that path's
own. Every path scores every realmix test image; parity and decisions are measured against the
PyTorch maps and scores, metrics with refad's exact MetricAccumulator. Writes deploy.md / .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model
from PIL import Image

PATHS = {  # name -> (export folder, runtime); "torch" is the checkpoint itself
    "pytorch-eager": (None, None),
    "onnxruntime-fp32": ("onnx-fp32", "onnxruntime"),
    "openvino-fp32": ("openvino-fp32", "openvino"),
    "openvino-fp16": ("openvino-fp16", "openvino"),
    "openvino-bf16": ("openvino-bf16", "openvino"),
    "openvino-int8": ("openvino-int8", "openvino"),
}
EXPORTS = {"onnx-fp32": ("onnx", "fp32"), "openvino-fp32": ("openvino", "fp32"),
           "openvino-fp16": ("openvino", "fp16"), "openvino-bf16": ("openvino", "bf16"),
           "openvino-int8": ("openvino", "int8")}
THREADS = 2
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss, which a
    child inherits from its parent's size at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mvtec_test(root: Path) -> list[tuple[str, Path, Path | None, int]]:
    """(category, image, mask or None, label) of every test image (MVTec layout)."""
    out = []
    for cat in sorted(p.name for p in root.iterdir() if (p / "test").is_dir()):
        for defect in sorted(p.name for p in (root / cat / "test").iterdir() if p.is_dir()):
            for img in images_in(root / cat / "test" / defect):
                mask = root / cat / "ground_truth" / defect / f"{img.stem}_mask.png"
                good = defect == "good"
                out.append((cat, img, None if good else mask, 0 if good else 1))
    return out


def mvtec_train(root: Path, per_category: int) -> dict[str, list[Path]]:
    cats = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    rng = np.random.default_rng(0)
    out = {}
    for cat in cats:
        files = images_in(root / cat / "train" / "good")
        pick = rng.choice(len(files), size=min(per_category, len(files)), replace=False)
        out[cat] = [files[i] for i in sorted(pick)]
    return out


def open_trained(run_dir: Path):
    from refad.api import open_run

    return open_run(run_dir, "cpu")


def train(args: argparse.Namespace, run_dir: Path) -> float:
    cmd = [sys.executable, "-m", "refad", "train", "--data", "mvtec", "--root", str(args.root),
           "--backbone", "tf_efficientnet_lite2", "--image-size", "256", "--epochs",
           str(args.epochs), "--batch-size", "16", "--set", f"train.lr={args.lr}",
           "--out", str(run_dir), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def export_all(run_dir: Path, work: Path, root: Path) -> dict[str, dict]:
    from refad.data import read_image_rgb
    from refad.export import export_model

    run = open_trained(run_dir)
    model, meta = run.model("unified")
    train_imgs = mvtec_train(root, 16)
    calib = [read_image_rgb(p) for files in train_imgs.values() for p in files]
    check = calib[::8]
    info = {"run": str(run_dir), "mode": "unified", "categories": sorted(train_imgs)}
    out = {}
    for name, (fmt, precision) in EXPORTS.items():
        start = time.perf_counter()
        m = export_model(run.extractor, {"unified": model}, {"unified": meta.calibration}, info,
                         work / name, fmt, precision, calibration_images=calib,
                         check_images=check, overwrite=True)
        out[name] = {"export_s": time.perf_counter() - start,
                     "parity_at_export": m["units"]["unified"]["parity"]}
    return out


def worker(args: argparse.Namespace) -> None:
    """One path in this process: timing, then every test image's map and score to .npy."""
    name, work = args.worker, Path(args.work)
    folder, runtime = PATHS[name]
    root = Path(args.root)
    from refad.deploy import preprocess_batch, read_rgb

    if folder is None:
        import torch

        from refad.export import ScoringGraph

        torch.set_num_threads(THREADS)
        run = open_trained(Path(args.run))
        graph = ScoringGraph(run.extractor, run.model("unified")[0]).eval()
        mean, std, size = run.extractor.mean, run.extractor.std, graph.model.spec.image_size

        def call(batch):
            with torch.inference_mode():
                maps, scores = graph(torch.from_numpy(batch))
            return maps.numpy(), scores.numpy()
    else:
        from refad.deploy import Inferencer

        inf = Inferencer(work / folder, runtime=runtime, threads=THREADS)
        mean, std, size = inf.mean, inf.std, inf.size
        call = inf.run
    tests = mvtec_test(root)
    rgbs = [read_rgb(t[1]) for t in tests[:8]]
    b8 = preprocess_batch(rgbs, size, mean, std)
    b1 = b8[:1]
    for _ in range(3):
        call(b1)
    lat = []
    for _ in range(args.iters):
        t = time.perf_counter()
        call(b1)
        lat.append(time.perf_counter() - t)
    call(b8)
    t8 = []
    for _ in range(max(2, args.iters // 4)):
        t = time.perf_counter()
        call(b8)
        t8.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    timing = {
        "b1_img_s": 1000 / float(lat_ms.mean()), "b1_p50_ms": float(np.percentile(lat_ms, 50)),
        "b1_p90_ms": float(np.percentile(lat_ms, 90)), "b8_img_s": 8 / float(np.median(t8)),
    }
    result_file = work / f"{name}-result.json"
    if args.timing_only:
        previous = json.loads(result_file.read_text())
        previous.update(timing, peak_rss_mib=peak_rss_mib())
        result_file.write_text(json.dumps(previous))
        return
    maps = np.lib.format.open_memmap(work / f"{name}-maps.npy", "w+", np.float32,
                                     (len(tests), size, size))
    scores = np.zeros(len(tests), np.float32)
    start = time.perf_counter()
    for i in range(0, len(tests), 8):
        batch = preprocess_batch([read_rgb(t[1]) for t in tests[i : i + 8]], size, mean, std)
        maps[i : i + len(batch)], scores[i : i + len(batch)] = call(batch)
    maps.flush()
    np.save(work / f"{name}-scores.npy", scores)
    result = {
        **timing,
        "testset_s": time.perf_counter() - start,
        "peak_rss_mib": peak_rss_mib(),
        "torch_loaded": "torch" in sys.modules,
    }
    result_file.write_text(json.dumps(result))


def masks_at(tests, size: int) -> np.ndarray:
    out = np.zeros((len(tests), size, size), bool)
    for i, (_, _, mask, _) in enumerate(tests):
        if mask is not None:
            with Image.open(mask) as img:
                full = np.asarray(img.convert("L")) > 127
            small = Image.fromarray(full.astype(np.uint8) * 255).resize(
                (size, size), Image.Resampling.NEAREST)
            out[i] = np.asarray(small) > 127
    return out


def metrics(tests, maps: np.ndarray, scores: np.ndarray, masks: np.ndarray) -> dict:
    from refad.metrics import MetricAccumulator

    cats = sorted({t[0] for t in tests})
    per = {}
    for cat in cats:
        idx = np.array([i for i, t in enumerate(tests) if t[0] == cat])
        acc = MetricAccumulator(mode="exact")
        labels = np.array([tests[i][3] for i in idx])
        for j in range(0, len(idx), 64):
            sl = idx[j : j + 64]
            acc.update(scores[sl], labels[j : j + 64], np.asarray(maps[sl]), masks[sl])
        per[cat] = acc.compute()
    return {k: float(np.mean([per[c][k] for c in cats])) for k in ("i_auroc", "p_auroc")}


def write_report(args, out: dict) -> None:
    rows = out["paths"]
    base = rows["pytorch-eager"]
    lines = [
        "# Deploy paths: PyTorch eager against exported graphs",
        "",
        f"Lite2 RLR at 256 px, unified, trained {out['schedule']} on realmix; "
        f"{out['test_images']} test images; {THREADS} threads of {out['cpu']}; one run, same "
        "machine, "
        "each path in its own process (deploy paths without torch). Command: "
        f"`{out['command']}`.",
        "",
        "| path | img/s b1 | img/s b8 | b1 p50 ms | b1 p90 ms | peak RSS MiB | map max diff "
        "(of range) | score max rel diff | decisions differing | I-AUROC | P-AUROC | "
        "dI-AUROC | dP-AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['b1_img_s']:.2f} | {r['b8_img_s']:.2f} | {r['b1_p50_ms']:.0f} | "
            f"{r['b1_p90_ms']:.0f} | {r['peak_rss_mib']:.0f} | {r['map_max_rel']:.2e} | "
            f"{r['score_max_rel']:.2e} | {r['decision_flips']} | {100 * r['i_auroc']:.2f} | "
            f"{100 * r['p_auroc']:.2f} | {100 * (r['i_auroc'] - base['i_auroc']):+.2f} | "
            f"{100 * (r['p_auroc'] - base['p_auroc']):+.2f} |"
        )
    fastest = max((n for n in rows if n != "pytorch-eager"), key=lambda n: rows[n]["b1_img_s"])
    f = rows[fastest]
    lines += [
        "",
        f"- onnxruntime fp32 / PyTorch eager at batch 1: "
        f"{rows['onnxruntime-fp32']['b1_img_s'] / base['b1_img_s']:.2f}x.",
        f"- Fastest deploy path at batch 1: **{fastest}**, "
        f"{f['b1_img_s'] / base['b1_img_s']:.2f}x PyTorch eager, at "
        f"{100 * (f['i_auroc'] - base['i_auroc']):+.2f} I-AUROC / "
        f"{100 * (f['p_auroc'] - base['p_auroc']):+.2f} P-AUROC points.",
        f"- Decisions use the run's calibrated threshold {out['threshold']:.6g}.",
        "- Peak RSS: each path's own process (VmHWM), over "
        + ("its timing runs at batch 1 and 8 (re-timed on a quiet machine with --timing-only; "
           "maps, scores and metrics from the full run)." if out.get("timing_only")
           else "its timing runs and its pass over the test set."),
        "- Export times (s) and the self-check figures recorded in each export's metadata: "
        + "; ".join(f"{k} {v['export_s']:.0f} s" for k, v in out["exports"].items()) + ".",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    Path(args.out).with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    ap.add_argument("--run", type=Path, default=None, help="existing run folder (skip training)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/refad-deploy-bench"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.0005)
    ap.add_argument("--iters", type=int, default=20, help="batch-1 timing iterations")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("deploy.md"))
    ap.add_argument("--timing-only", action="store_true",
                    help="re-time the paths of the last full run in --work (module doc)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    state = args.work / "bench-state.json"
    if args.timing_only:
        saved = json.loads(state.read_text())
        run_dir, train_s, exports = Path(saved["run"]), saved["train_s"], saved["exports"]
        args.epochs, args.lr = saved["epochs"], saved["lr"]
    else:
        run_dir = args.run or args.work / "run"
        train_s = None if args.run else train(args, run_dir)
        exports = export_all(run_dir, args.work, args.root)
        state.write_text(json.dumps({"run": str(run_dir), "train_s": train_s, "exports": exports,
                                     "epochs": args.epochs, "lr": args.lr}))
    tests = mvtec_test(args.root)
    paths = {}
    for name in PATHS:
        cmd = [sys.executable, __file__, "--worker", name, "--work", str(args.work),
               "--root", str(args.root), "--run", str(run_dir), "--iters", str(args.iters),
               *(["--timing-only"] if args.timing_only else [])]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        paths[name] = json.loads((args.work / f"{name}-result.json").read_text())
    ref_maps = np.load(args.work / "pytorch-eager-maps.npy", mmap_mode="r")
    ref_scores = np.load(args.work / "pytorch-eager-scores.npy")
    masks = masks_at(tests, ref_maps.shape[-1])
    threshold = open_trained(run_dir).model("unified")[1].calibration["threshold"]
    span = float(ref_maps.max() - ref_maps.min())
    for name, r in paths.items():
        maps = np.load(args.work / f"{name}-maps.npy", mmap_mode="r")
        scores = np.load(args.work / f"{name}-scores.npy")
        diff = max(float(np.abs(maps[i : i + 64] - ref_maps[i : i + 64]).max())
                   for i in range(0, len(tests), 64))
        r["map_max_rel"] = diff / span
        r["score_max_rel"] = float((np.abs(scores - ref_scores) / np.abs(ref_scores)).max())
        r["decision_flips"] = int(((scores > threshold) != (ref_scores > threshold)).sum())
        r.update(metrics(tests, maps, scores, masks))
    cfg = open_trained(run_dir).config.train
    out = {"command": " ".join(["python", "benchmarks/deploy.py", *sys.argv[1:]]),
           "schedule": f"{cfg.epochs} epoch(s), batch {cfg.batch_size}, lr {cfg.lr}",
           "train_s": train_s, "test_images": len(tests), "cpu": cpu_model(),
           "timing_only": args.timing_only,
           "threshold": threshold, "exports": exports, "paths": paths}
    write_report(args, out)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
