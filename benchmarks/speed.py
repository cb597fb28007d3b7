"""Speed, memory and fidelity of refad's RLR on whatever device is present; writes a report.

    python benchmarks/speed.py --device cuda --out benchmarks/speed.md   # the GPU report
    python benchmarks/speed.py --device cpu --out benchmarks/speed.md    # short CPU run

The GPU plan puts the acceptance rows first and stops starting rows after --budget seconds
(default 540, under the device tool's 10 minutes per command); --full adds secondary rows, and
--json FILE / --merge let a second command add rows to the first one's report.

Measured (B6 shapes: levels [2, 3] at 256 px -> 72x32x32 and 200x16x16; Lite2: 48x32x32 and
120x16x16; 4 layers, widths 256/512, random weights and random features - speed does not
depend on values):
- training images/s from cached features: refad's loop (`engine.steps`: features resident on
  the device, bf16 autocast and fused Adam on CUDA, no loader, no per-step sync) next to a plain
  loop as the authors' code runs it (features on the host, per-batch copy, float32, masked
  dense attention, sync per step);
- feature extraction images/s (timm backbone, pretrained=False);
- inference images/s from features (model + scoring) and end to end (backbone included);
- batch-1 latency p50/p90 (end to end and from features);
- peak memory (CUDA: max_memory_allocated; CPU: the worker's peak RSS);
- fidelity: anomaly maps of the fast path vs the float32 reference path.

Every row runs in its own subprocess (clean peak-memory counters; a failure or a timeout costs
one row, not the report), and the report is rewritten after each row, so an interrupted run
still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import kept_notes

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (2, 3)
IMAGE = 256
GRIDS = ((32, 32), (16, 16))
SHAPES: dict[str, dict[str, Any]] = {
    "b6": {"backbone": "tf_efficientnet_b6", "channels": (72, 200)},
    "lite2": {"backbone": "tf_efficientnet_lite2", "channels": (48, 120)},
}
MVTEC_TRAIN_IMAGES = 3629  # the size of the device-resident cache in the GPU training rows
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing refad


# ------------------------------------------------------------------------------------ worker
def _setup(spec: dict[str, Any]) -> torch.device:
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    else:
        from refad.api import cpu_threads

        torch.set_num_threads(cpu_threads())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _spec(shapes: str) -> Any:
    from refad.api import FeatureSpec

    return FeatureSpec(LEVELS, SHAPES[shapes]["channels"], GRIDS, IMAGE)


def _model(shapes: str, impl: str, device: torch.device) -> Any:
    from refad.api import RLRConfig, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("rlr", _spec(shapes), RLRConfig(attention_impl=impl), device)


def _features(shapes: str, n: int, device: Any, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = _spec(shapes)
    return [
        torch.randn(n, c, h, w, generator=g).to(device)
        for c, (h, w) in zip(spec.channels, spec.shapes, strict=True)
    ]


def _extractor(shapes: str, device: torch.device, channels_last: bool = False) -> Any:
    from refad.api import FeatureExtractor

    ex = FeatureExtractor(SHAPES[shapes]["backbone"], levels=LEVELS, weights=None).to(device)
    if channels_last:
        ex = ex.to(memory_format=torch.channels_last)
    return ex


def _images(n: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _throughput(
    device: torch.device, fn: Callable[[], None], batch: int, iters: int, warmup: int
) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    seconds = time.perf_counter() - tic
    return {"img_s": batch * iters / seconds, "seconds": seconds}


def _latency(
    device: torch.device, fn: Callable[[], None], iters: int, warmup: int
) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        tic = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - tic) * 1e3)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
        "img_s": 1e3 / statistics.mean(times),
    }


def work_train(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    batch, iters, warmup = spec["batch"], spec["iters"], spec["warmup"]
    steps = iters + warmup
    model = _model(spec["shapes"], "fast" if spec["path"] == "fast" else "reference", device)
    model.train()
    noise = torch.Generator(device=device).manual_seed(0)
    if spec["path"] == "fast":
        from refad.api import (
            STORAGE_DTYPES,
            DeviceFeatures,
            RunConfig,
            StepSettings,
            compiled_loss,
            make_optimizer,
            train_steps,
        )

        n = spec["cached"]
        storage = STORAGE_DTYPES[spec["storage"]]
        features = DeviceFeatures(_features(spec["shapes"], n, "cpu"), device, storage)
        optimizer = make_optimizer(model, RunConfig(), device)
        loss_fn = compiled_loss(model, spec.get("compile"))
        order = (torch.randperm(steps * batch) % n).to(device)
        _reset_peak(device)
        warm = order[: warmup * batch]
        settings = StepSettings(batch_size=batch, amp=True, loss_fn=loss_fn)
        train_steps(model, optimizer, features, warm, noise, settings)
        _sync(device)
        tic = time.perf_counter()
        timed = order[warmup * batch :]
        total, _ = train_steps(model, optimizer, features, timed, noise, settings)
        total.item()
        seconds = time.perf_counter() - tic
        extra = {"cache_mib": features.nbytes / 2**20, "cached_images": n}
    else:  # a plain loop (authors' style): host features, per-batch copy, float32, sync per step
        n = max(batch * 4, 64)
        levels = _features(spec["shapes"], n, "cpu")
        if device.type == "cuda":
            levels = [lvl.pin_memory() for lvl in levels]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(k: int) -> None:
            idx = torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(k))
            data = [lvl[idx].to(device, non_blocking=True) for lvl in levels]
            loss = model.loss(data, generator=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

        _reset_peak(device)
        for k in range(warmup):
            step(k)
        _sync(device)
        tic = time.perf_counter()
        for k in range(iters):
            step(warmup + k)
        _sync(device)
        seconds = time.perf_counter() - tic
        extra = {}
    return {"img_s": batch * iters / seconds, "peak_mib": _peak_mib(device), **extra}


def work_extract(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    mode = spec["mode"]  # float32 | float32-cl | bf16-cl
    cl = mode.endswith("-cl")
    extractor = _extractor(spec["shapes"], device, cl)
    images = _images(spec["batch"], device, cl)
    amp = mode.startswith("bf16") and device.type == "cuda"

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            extractor(images)

    _reset_peak(device)
    out = _throughput(device, run, spec["batch"], spec["iters"], spec["warmup"])
    return {**out, "peak_mib": _peak_mib(device)}


def _scoring_fn(spec: dict[str, Any], device: torch.device, batch: int) -> Callable[[], None]:
    """The callable a row times: reference = the engine's eager float32 model.score."""
    from refad.api import Scorer

    e2e = spec["source"] == "images"
    extractor = _extractor(spec["shapes"], device) if e2e else None
    if spec["path"] == "reference":
        model = _model(spec["shapes"], "reference", device).eval()

        def run() -> None:
            with torch.inference_mode():
                levels = extractor(images) if e2e else feats
                model.score(levels)

    else:
        model = _model(spec["shapes"], "fast", device)
        mode = spec.get("compile")
        scorer = Scorer(model, device, amp=True, compile_mode=mode, extractor=extractor)

        def run() -> None:
            scorer.images(images) if e2e else scorer(feats)

    images = _images(batch, device) if e2e else None
    feats = None if e2e else _features(spec["shapes"], batch, device)
    return run


def work_infer(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    run = _scoring_fn(spec, device, spec["batch"])
    _reset_peak(device)
    out = _throughput(device, run, spec["batch"], spec["iters"], spec["warmup"])
    return {**out, "peak_mib": _peak_mib(device)}


def work_latency(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    run = _scoring_fn(spec, device, 1)
    _reset_peak(device)
    out = _latency(device, run, spec["iters"], spec["warmup"])
    return {**out, "peak_mib": _peak_mib(device)}


def work_fidelity(spec: dict[str, Any]) -> dict[str, Any]:
    device = _setup(spec)
    from refad.api import Scorer

    model = _model(spec["shapes"], "fast", device).eval()
    reference = model.with_attention_impl("reference").eval()
    feats = _features(spec["shapes"], spec["batch"], device, seed=3)

    def errors(got: Any, want: Any) -> dict[str, float]:
        return {
            "rel_l2": ((got.maps - want.maps).norm() / want.maps.norm()).item(),
            "rel_max": ((got.maps - want.maps).abs().max() / want.maps.abs().max()).item(),
            "image_rel_max": ((got.image - want.image).abs().max() / want.image.abs().max()).item(),
        }

    with torch.inference_mode():
        want = reference.score(feats)
        fp32 = model.score(feats)
        with torch.autocast(device.type, dtype=torch.bfloat16):  # CPU autocast too, on purpose
            recs = model.reconstruct(feats)
        bf16 = model.score_reconstruction(feats, [r.float() for r in recs])
    out: dict[str, Any] = {"float32": errors(fp32, want), "bf16": errors(bf16, want)}
    if device.type == "cuda":  # does MLKA run in a fused SDPA kernel (no N x N score tensor)?
        from torch.nn.attention import SDPBackend, sdpa_kernel

        fused = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                 SDPBackend.FLASH_ATTENTION]
        try:
            with torch.inference_mode(), sdpa_kernel(fused):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    model.reconstruct(feats)
                model.reconstruct(feats)
            out["fused_sdpa"] = "yes (bf16 and float32)"
        except RuntimeError as exc:
            out["fused_sdpa"] = f"no: {exc}".replace("\n", " ")[:200]
    if spec.get("compile"):
        compiled = Scorer(model, device, amp=True, compile_mode=spec["compile"])
        compiled(feats)
        out["bf16_compiled"] = errors(compiled(feats), want)
    return out


WORKERS = {
    "train": work_train,
    "extract": work_extract,
    "infer": work_infer,
    "latency": work_latency,
    "fidelity": work_fidelity,
}


# ------------------------------------------------------------------------------------- plans
def gpu_plan(
    device: str,
    compile_tp: str | None,
    compile_lat: str | None,
    full: bool,
    compile_train: tuple[str, ...] = ("reduce-overhead",),
) -> list[dict]:
    """Rows in order of importance (acceptance first), so a time budget cuts the least useful.

    The core plan fits in about 8 minutes on one H100 (the device tool allows 10 per command);
    `full` adds Lite2 rows, compiled end-to-end throughput and from-features latency.
    """
    d = {"device": device}
    b6 = {"shapes": "b6", **d}
    cache = {"cached": MVTEC_TRAIN_IMAGES, "storage": "float16"}

    def infer(path: str, source: str, comp: str | None = None) -> dict:
        iters = 20 if path == "fast" else 5
        return {"kind": "infer", "path": path, "source": source, "batch": 64, "iters": iters,
                "warmup": 3, "compile": comp, **b6}

    def latency(path: str, source: str, comp: str | None = None) -> dict:
        iters = 200 if path == "fast" else 30
        return {"kind": "latency", "path": path, "source": source, "iters": iters,
                "warmup": 10, "compile": comp, **b6}

    plan = [
        {"kind": "fidelity", "batch": 4, **b6},
        {"kind": "train", "path": "fast", "batch": 64, "iters": 30, "warmup": 5, **cache, **b6},
    ]
    for mode in compile_train:  # the compiled training step (train.compile): launch-bound
        plan.append({"kind": "train", "path": "fast", "batch": 64, "iters": 30, "warmup": 5,
                     "compile": mode, **cache, **b6})
    plan += [
        {"kind": "extract", "mode": "float32", "batch": 64, "iters": 20, "warmup": 5, **b6},
        {"kind": "extract", "mode": "float32-cl", "batch": 64, "iters": 20, "warmup": 5, **b6},
        infer("fast", "features"),
        infer("fast", "images"),
        latency("fast", "images"),
    ]
    if compile_tp:
        plan.append(infer("fast", "features", compile_tp))
    if compile_lat:
        plan.append(latency("fast", "images", compile_lat))
    plan += [
        {"kind": "train", "path": "reference", "batch": 64, "iters": 8, "warmup": 2, **b6},
        infer("reference", "features"),
        infer("reference", "images"),
        latency("reference", "images"),
        {"kind": "train", "path": "fast", "batch": 4, "iters": 50, "warmup": 10, **cache, **b6},
        {"kind": "train", "path": "reference", "batch": 4, "iters": 20, "warmup": 5, **b6},
        {"kind": "extract", "mode": "bf16-cl", "batch": 64, "iters": 20, "warmup": 5, **b6},
        # the CPU target (2 cores, Lite2, batch 8), on this machine's CPU limited to 2 threads
        {"kind": "infer", "path": "fast", "source": "images", "shapes": "lite2", "batch": 8,
         "iters": 3, "warmup": 1, "device": "cpu", "threads": 2},
    ]
    if full:
        lite = {"shapes": "lite2", **d}
        plan += [
            {"kind": "fidelity", "batch": 4, "compile": compile_tp or "default", **b6},
            {"kind": "train", "path": "fast", "batch": 64, "iters": 30, "warmup": 5, **cache,
             **lite},
            {"kind": "extract", "mode": "float32-cl", "batch": 64, "iters": 20, "warmup": 5,
             **lite},
            latency("fast", "features"),
            latency("reference", "features"),
        ]
        if compile_tp:
            plan.append(infer("fast", "images", compile_tp))
        if compile_lat:
            plan.append(latency("fast", "features", compile_lat))
    return _dedupe(plan)


def cpu_plan() -> list[dict]:
    d = {"device": "cpu"}
    return [
        {"kind": "fidelity", "shapes": "b6", "batch": 2, **d},
        {"kind": "infer", "path": "fast", "source": "images", "shapes": "lite2", "batch": 8,
         "iters": 6, "warmup": 1, **d},
        {"kind": "infer", "path": "reference", "source": "images", "shapes": "lite2",
         "batch": 8, "iters": 6, "warmup": 1, **d},
        {"kind": "infer", "path": "fast", "source": "features", "shapes": "lite2", "batch": 8,
         "iters": 6, "warmup": 1, **d},
        {"kind": "infer", "path": "reference", "source": "features", "shapes": "lite2",
         "batch": 8, "iters": 6, "warmup": 1, **d},
        {"kind": "latency", "path": "fast", "source": "images", "shapes": "lite2", "iters": 5,
         "warmup": 1, **d},
        {"kind": "latency", "path": "reference", "source": "images", "shapes": "lite2",
         "iters": 5, "warmup": 1, **d},
        {"kind": "train", "path": "fast", "shapes": "b6", "batch": 4, "iters": 2, "warmup": 1,
         "cached": 64, "storage": "float32", **d},
        {"kind": "train", "path": "reference", "shapes": "b6", "batch": 4, "iters": 2,
         "warmup": 1, **d},
        {"kind": "train", "path": "fast", "shapes": "lite2", "batch": 4, "iters": 2,
         "warmup": 1, "cached": 64, "storage": "float32", **d},
        {"kind": "extract", "shapes": "lite2", "mode": "float32", "batch": 8, "iters": 3,
         "warmup": 1, **d},
        {"kind": "extract", "shapes": "b6", "mode": "float32", "batch": 8, "iters": 2,
         "warmup": 1, **d},
    ]


def _dedupe(plan: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in plan:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


# ------------------------------------------------------------------------------------ report
def label(row: dict) -> str:
    parts = [row["kind"], row["shapes"]]
    for key in ("path", "source", "mode", "storage"):
        if row.get(key):
            parts.append(row[key])
    if row.get("compile"):
        parts.append(f"compile={row['compile']}")
    if "batch" in row:
        parts.append(f"batch {row['batch']}")
    if row["device"] == "cpu" and row.get("threads"):
        parts.append(f"{row['threads']} threads")
    return ", ".join(parts)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.1e}"
        return f"{value:,.{digits}f}"
    return str(value)


def find(results: list[dict], **match: Any) -> dict | None:
    for row, res in results:
        if res.get("ok") and all(row.get(k) == v for k, v in match.items()):
            return res
    return None


def acceptance(results: list[tuple[dict, dict]], main_device: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; GPU targets need a CUDA run."""
    gpu = main_device.startswith("cuda")
    rows: list[tuple[str, str, str]] = []

    def check(target: str, value: float | None, ok: bool | None, unit: str) -> None:
        if not gpu:
            rows.append((target, "-", "to be measured on GPU"))
        elif value is None:
            rows.append((target, "-", "not measured (row failed)"))
        else:
            rows.append((target, f"{fmt(value, 2)} {unit}", "PASS" if ok else "FAIL"))

    dev = {"device": main_device}

    def best(key: str, results_: list[dict | None]) -> float | None:
        vals = [r[key] for r in results_ if r]
        return max(vals) if vals else None

    tr = best("img_s", [r for (row, r) in results if r.get("ok") and row["kind"] == "train"
                        and row.get("path") == "fast" and row.get("shapes") == "b6"
                        and row.get("batch") == 64 and row["device"] == main_device])
    check("training >= 1,500 img/s (B6, cached features, batch 64)", tr,
          tr is not None and tr >= 1500, "img/s")
    ex = best("img_s", [find(results, kind="extract", shapes="b6", mode=m, **dev)
                        for m in ("float32", "float32-cl")])
    check("feature extraction >= 1,000 img/s (B6, float32, batch 64)", ex,
          ex is not None and ex >= 1000, "img/s")
    inf = best("img_s", [r for (row, r) in results if r.get("ok") and row["kind"] == "infer"
                         and row.get("path") == "fast" and row.get("source") == "features"
                         and row.get("shapes") == "b6" and row["device"] == main_device])
    check("inference >= 2,000 img/s (B6, batch 64, model + scoring from features)", inf,
          inf is not None and inf >= 2000, "img/s")
    lat = [r["p50_ms"] for (row, r) in results if r.get("ok") and row["kind"] == "latency"
           and row.get("path") == "fast" and row.get("source") == "images"
           and row["device"] == main_device]
    p50 = min(lat) if lat else None
    check("batch-1 latency p50 < 8 ms (B6, image in, map + score out)", p50,
          p50 is not None and p50 < 8, "ms")
    mem = [r["peak_mib"] for (row, r) in results if r.get("ok") and row["kind"] == "infer"
           and row.get("path") == "fast" and row.get("source") == "images"
           and row.get("shapes") == "b6" and row["device"] == main_device]
    peak = min(mem) / 1024 if mem else None
    check("peak memory at batch 64 < 5 GiB (B6, end to end)", peak,
          peak is not None and peak < 5, "GiB")
    fid = find(results, kind="fidelity", shapes="b6", **dev)
    b = fid and fid["bf16"]["rel_l2"]
    f = fid and fid["float32"]["rel_l2"]
    for name, value, limit in (("bf16", b, 1e-2), ("float32", f, 1e-5)):
        verdict = "PASS" if value is not None and value < limit else "FAIL"
        measured = "-" if value is None else f"{value:.1e}"
        where = "" if gpu else " (measured on CPU)"
        rows.append((f"fidelity {name}: map rel. error < {limit:.0e}", measured,
                     verdict + where if value is not None else "not measured"))
    cpu_rows = [(row, r) for (row, r) in results if r.get("ok") and row["kind"] == "infer"
                and row["device"] == "cpu" and row.get("shapes") == "lite2"
                and row.get("source") == "images" and row.get("path") == "fast"]
    if cpu_rows:
        row, r = cpu_rows[0]
        threads = row.get("threads") or "all"
        rows.append(("CPU Lite2 inference >= 4 img/s (2 cores, batch 8, end to end)",
                     f"{fmt(r['img_s'], 2)} img/s ({threads} threads)",
                     "PASS" if r["img_s"] >= 4 else "FAIL"))
    else:
        rows.append(("CPU Lite2 inference >= 4 img/s (2 cores, batch 8, end to end)", "-",
                     "not measured"))
    return rows


def write_report(path: Path, results: list[tuple[dict, dict]], meta: dict[str, str]) -> None:
    lines = [
        "# refad speed report (RLR)",
        "",
        f"- command: `{meta['command']}`",
        f"- device: {meta['device_name']}",
        f"- torch {meta['torch']}, timm {meta['timm']}, Python {meta['python']}",
        f"- CPU threads used: {meta['threads']}; date: {meta['date']}",
        "- model: RLR, levels [2, 3], 256 px, 4 layers, widths 256/512, 8 heads; random weights "
        "and random features (speed does not depend on their values)",
        "- reference = a plain path (authors' style): masked dense SDPA, float32, host "
        "features copied per batch, sync per step; fast = LCA windowed on CUDA and dense "
        "with a cached mask on the CPU, cached MLKA mask, "
        "bf16 autocast on CUDA (float32 on CPU), device-resident cache, fused Adam, fused "
        "device scoring",
    ]
    if meta.get("merged"):
        lines.append(f"- {meta['merged']} rows kept from an earlier run (--merge)")
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    lines += ["", "## Acceptance", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in acceptance(results, meta["main_device"])]
    lines += [
        "",
        "## Measurements",
        "",
        "| row | device | img/s | p50 ms | p90 ms | peak MiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, res in results:
        if row["kind"] == "fidelity":
            continue
        if not res.get("ok"):
            lines.append(f"| {label(row)} | {row['device']} | - | - | - | - | "
                         f"FAILED: {res.get('error', '?')[:160]} |")
            continue
        note = ""
        if "cache_mib" in res:
            note = f"cache {res['cache_mib']:,.0f} MiB on device ({res['cached_images']} images)"
        lines.append(
            f"| {label(row)} | {row['device']} | {fmt(res.get('img_s'), 2)} | "
            f"{fmt(res.get('p50_ms'), 2)} | {fmt(res.get('p90_ms'), 2)} | "
            f"{fmt(res.get('peak_mib'), 0)} | {note} |"
        )
    lines += ["", "## Reference vs fast, side by side", "",
              "| measurement | reference img/s | fast img/s | speed-up |", "|---|---|---|---|"]
    for row, res in results:
        if row.get("path") != "fast" or not res.get("ok"):
            continue
        twin = {k: v for k, v in row.items()
                if k not in ("path", "compile", "storage", "cached", "iters", "warmup")}
        ref = find(results, path="reference", **twin)
        if ref is None:
            continue
        key = "p50_ms" if row["kind"] == "latency" else "img_s"
        if key == "p50_ms":
            speed = ref["p50_ms"] / res["p50_ms"]
            lines.append(f"| {label(row)} (p50 ms) | {fmt(ref['p50_ms'], 2)} ms | "
                         f"{fmt(res['p50_ms'], 2)} ms | {speed:.1f}x |")
        else:
            speed = res["img_s"] / ref["img_s"]
            lines.append(f"| {label(row)} | {fmt(ref['img_s'], 2)} | {fmt(res['img_s'], 2)} | "
                         f"{speed:.1f}x |")
    fids = [(row, res) for row, res in results if row["kind"] == "fidelity"]
    for row, res in fids:
        if res.get("fused_sdpa"):
            lines += ["", f"MLKA in a fused SDPA kernel on {row['device']}: {res['fused_sdpa']}"]
    if fids:
        lines += ["", "## Fidelity: fast path vs float32 reference path (anomaly maps)", "",
                  "| device | batch | fast path | rel. L2 error | rel. max error "
                  "| image score rel. error |", "|---|---|---|---|---|---|"]
        for row, res in fids:
            if not res.get("ok"):
                lines.append(f"| {row['device']} | {row['batch']} | FAILED: "
                             f"{res.get('error', '?')[:160]} | | | |")
                continue
            for name in ("float32", "bf16", "bf16_compiled"):
                if name in res:
                    e = res[name]
                    lines.append(f"| {row['device']} | {row['batch']} | {name} | "
                                 f"{e['rel_l2']:.1e} | {e['rel_max']:.1e} | "
                                 f"{e['image_rel_max']:.1e} |")
    lines += [
        "",
        "Authors' code on one H100 (issue text, for comparison): training 13.6 img/s at batch 4, "
        "169 at batch 64; inference 6.4 img/s at batch 1 (156 ms), 312 img/s at batch 64, "
        "peak 5.2 GiB.",
        "",
    ]
    path.write_text("\n".join(lines) + "\n" + kept_notes(path))


# -------------------------------------------------------------------------------------- main
def run_worker(row: dict, timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(row)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"ok": False, "error": tail[-1] if tail else f"exit code {proc.returncode}"}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if any)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "speed.md")
    parser.add_argument("--kinds", default=",".join(WORKERS),
                        help="comma-separated subset of: " + ", ".join(WORKERS))
    parser.add_argument("--full", action="store_true", help="GPU: also the secondary rows")
    parser.add_argument("--compile-throughput", default="default",
                        help="torch.compile mode for the batch-64 fast inference rows on CUDA "
                             "('none': off)")
    parser.add_argument("--compile-latency", default="reduce-overhead",
                        help="torch.compile mode for the batch-1 fast rows on CUDA ('none': off)")
    parser.add_argument("--compile-train", default="reduce-overhead",
                        help="comma-separated torch.compile modes (train.compile), one "
                             "batch-64 compiled training row each on CUDA ('none': no such row)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per row")
    parser.add_argument("--budget", type=int, default=540,
                        help="seconds for the whole run; rows that would start later are skipped")
    parser.add_argument("--json", type=Path, default=None,
                        help="also store the raw results here (needed by --merge)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of an earlier run (--json) that this run lacks")
    parser.add_argument("--note", default="", help="free text added to the report header")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        row = json.loads(args.worker)
        try:
            result = {"ok": True, **WORKERS[row["kind"]](row)}
        except Exception as exc:  # reported in the table, the other rows still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}".replace("\n", " ")}
        print("RESULT " + json.dumps(result), flush=True)
        return

    import timm

    from refad.api import cpu_threads

    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kinds = set(args.kinds.split(","))
    if device.startswith("cuda"):
        ct = None if args.compile_throughput == "none" else args.compile_throughput
        cl = None if args.compile_latency == "none" else args.compile_latency
        ctr = tuple(m for m in args.compile_train.split(",") if m and m != "none")
        plan = gpu_plan(device, ct, cl, args.full, ctr)
    else:
        plan = cpu_plan()
    plan = [r for r in plan if r["kind"] in kinds]
    meta = {
        "command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "device_name": device_name(device),
        "main_device": device,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": str(cpu_threads()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "note": args.note,
    }
    store = args.json
    if args.merge and store is None:
        parser.error("--merge needs --json PATH (where the earlier run stored its rows)")
    earlier: list[tuple[dict, dict]] = []
    if args.merge and store.is_file():
        earlier = [tuple(pair) for pair in json.loads(store.read_text())["results"]]
    keys = {json.dumps(r, sort_keys=True) for r in plan}
    kept = [(r, res) for r, res in earlier if json.dumps(r, sort_keys=True) not in keys]
    results: list[tuple[dict, dict]] = list(kept)
    meta["merged"] = str(len(kept)) if kept else ""
    for i, row in enumerate(plan, 1):
        elapsed = time.perf_counter() - started
        if elapsed + 20 > args.budget:
            res = {"ok": False, "error": f"skipped: time budget of {args.budget} s used up"}
        else:
            tic = time.perf_counter()
            res = run_worker(row, int(min(args.timeout, args.budget - elapsed)))
            print(f"[{i}/{len(plan)}] {label(row)}: "
                  f"{'ok' if res.get('ok') else 'FAILED (' + str(res.get('error')) + ')'} "
                  f"in {time.perf_counter() - tic:.0f} s", flush=True)
        results.append((row, res))
        write_report(args.out, results, meta)
        if store is not None:
            store.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}" + (f" and {store}" if store else ""))


if __name__ == "__main__":
    main()
