"""RLR's attention paths on the CPU: eager batch-1 latency and a training step, per path.

    python benchmarks/attention_cpu.py            # writes benchmarks/attention_cpu.md

Why: `attention_impl="fast"` resolves to one path per device when a model is built; this is
the measurement behind the CPU choice. Lite2 shapes at 256 px (levels [2, 3]: 48 x 32 x 32 and
120 x 16 x 16), the paper's RLR (4 layers, widths 256/512, windows 7 and 5), random weights and
features (speed does not depend on values), torch threads = the machine's cores. Paths are
interleaved over --rounds so drift in the machine's speed hits them alike; medians reported.
Also checks that every path gives the reference path's maps.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from machine import cpu_model

from refad.models.base import FeatureSpec
from refad.models.rlr.config import RLRConfig
from refad.models.rlr.model import RLR

HERE = Path(__file__).resolve().parent
PATHS = ("dense", "halo", "windowed")
SPEC = FeatureSpec((2, 3), (48, 120), ((32, 32), (16, 16)), 256)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        out.append((time.perf_counter() - tic) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=8, help="forward timings per round")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=HERE / "attention_cpu.md")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    base = RLR(SPEC, RLRConfig(attention_impl="reference")).eval()
    models = {p: base.with_attention_impl(p).eval() for p in PATHS}
    g = torch.Generator().manual_seed(1)
    one = [torch.randn(1, c, h, w, generator=g).abs()
           for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)]
    batch = [torch.randn(a.train_batch, c, h, w, generator=g).abs()
             for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)]
    with torch.inference_mode():
        ref = base.score(one).maps
        fidelity = {p: float((m.score(one).maps - ref).abs().max() / ref.abs().max())
                    for p, m in models.items()}
    infer: dict[str, list[float]] = {p: [] for p in PATHS}
    train: dict[str, list[float]] = {p: [] for p in PATHS}
    for _ in range(a.rounds):
        for p, m in models.items():
            with torch.inference_mode():
                m.score(one)  # warm
                infer[p] += timed(lambda m=m: m.score(one), a.repeats)
            m.train()

            def step(m=m) -> None:
                m.zero_grad(set_to_none=True)
                m.loss(batch, torch.Generator().manual_seed(0)).backward()

            step()
            train[p] += timed(step, 2)
            m.eval()
    dense_i = statistics.median(infer["dense"])
    dense_t = statistics.median(train["dense"])
    lines = [
        "# RLR attention paths on the CPU",
        "",
        "Command: `python benchmarks/attention_cpu.py` "
        f"(written {time.strftime('%Y-%m-%d %H:%M')}).",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {platform.machine()}.",
        "Model: the paper's RLR (4 layers, widths 256/512, windows 7/5) on Lite2's level-2/3 "
        "shapes at 256 px, from features (no backbone); random weights and features.",
        "",
        f"| path | batch-1 score p50 ms | vs dense | training step ms (batch {a.train_batch}) "
        "| vs dense | map max diff vs reference (of max) |",
        "|---|---|---|---|---|---|",
    ]
    for p in PATHS:
        mi, mt = statistics.median(infer[p]), statistics.median(train[p])
        lines.append(f"| {p} | {mi:.1f} | {dense_i / mi:.2f}x | {mt:.0f} | {dense_t / mt:.2f}x "
                     f"| {fidelity[p]:.1e} |")
    lines += [
        "",
        f"{a.rounds} interleaved rounds of {a.repeats} batch-1 scorings and 2 training steps per "
        "path; medians. `fast` on the CPU resolves to `halo` (refad.models.rlr).",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
