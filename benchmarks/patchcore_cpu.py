"""PatchCore scoring throughput on the CPU, beside RLR's (benchmarks/speed_cpu.md), and the
nearest-neighbour search in torch (what refad runs) against faiss-cpu's exact index.

    python benchmarks/patchcore_cpu.py --run runs/realmix/patchcore-e1-b32 \
        --root ../shared/data/realmix --out benchmarks/patchcore_cpu.md

End to end = normalised images in (batch 8, already decoded and resized), maps and image scores
out (backbone + bank search + upsampling + smoothing), through the Scorer every command uses.
Fit time and peak memory of the fit are the realmix rows' (benchmarks/realmix.md).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model

from refad.api import open_run
from refad.data import ImageDataset, load_split
from refad.inference import Scorer


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path("../shared/data/realmix"))
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/patchcore_cpu.md"))
    args = p.parse_args()
    if not args.root.is_dir():
        print(f"data not found at {args.root}; nothing to do", file=sys.stderr)
        return 2
    run = open_run(args.run, "cpu")
    model, _ = run.model(run.units[0])
    size = run.config.data.image_size
    samples = load_split(run.config.data, "test")[:: max(1, 1053 // args.images)][: args.images]
    ds = ImageDataset(samples, size, run.extractor.mean, run.extractor.std)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    scorer = Scorer(model, "cpu", run.extractor)
    batches = images.split(8)
    end_to_end = timed(lambda: [scorer.images(b) for b in batches], 2) / len(images)
    with torch.inference_mode():
        levels = [run.extractor(b) for b in batches]
    model_only = timed(lambda: [scorer(lv) for lv in levels], 2) / len(images)
    queries = torch.cat([model.embed(lv).reshape(-1, model.embed_dim) for lv in levels])
    torch_nn = timed(lambda: model.nearest(queries), 2) / len(images)
    rows = [
        f"| end to end (images in, batch 8) | {1 / end_to_end:.2f} | {1000 * end_to_end:.0f} |",
        f"| model only (levels in, batch 8) | {1 / model_only:.2f} | {1000 * model_only:.0f} |",
        f"| nearest-neighbour search, torch (refad) | {1 / torch_nn:.2f} | "
        f"{1000 * torch_nn:.0f} |",
    ]
    try:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatL2(model.embed_dim)
        index.add(model.bank.numpy())
        q = queries.numpy()
        faiss_nn = timed(lambda: index.search(q, 1), 2) / len(images)
        rows.append(f"| nearest-neighbour search, faiss IndexFlatL2 (exact) | "
                    f"{1 / faiss_nn:.2f} | {1000 * faiss_nn:.0f} |")
    except ImportError:
        rows.append("| nearest-neighbour search, faiss | - | - (faiss-cpu not installed) |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# PatchCore on the CPU: scoring throughput\n",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        f"Run: `{args.run}` ({run.config.backbone.name}, levels {run.config.backbone.levels}, "
        f"{size} px, bank {model.bank.shape[0]} x {model.bank.shape[1]}); {len(images)} realmix "
        f"test images; peak resident memory of this process {peak:.0f} MB.\n",
        "| what | img/s | ms per image |", "|---|---:|---:|", *rows, "",
        "RLR on the same CPU (benchmarks/speed_cpu.md): 5.06 img/s end to end (Lite2, levels "
        "2-3, 256 px, batch 8), after hours of training (one epoch on realmix: 17 minutes here).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
