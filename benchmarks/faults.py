"""SIGKILL tiny trainings at random moments; open and resume each; compare with a clean run.

    python benchmarks/faults.py --trials 30 --out benchmarks/faults.md

One uninterrupted reference run is trained first (`refad train` in a subprocess, the same
command a user types). Each trial starts the same command into its own folder and kills it
with SIGKILL: one trial in six at a moment drawn over the whole start-up (before any file
exists), the others at a moment drawn uniformly over the training itself, counted from the
moment `config.json` appears (feature extraction, epochs, checkpoint saves, calibration).
Then it checks what a user would meet:
- the folder opens: its manifest names one complete epoch and every file it names loads
  (or, killed before the first epoch ended, it says that no checkpoint exists yet);
- `refad train --out RUN --resume` finishes;
- the resumed weights, optimiser moments and calibration are bit-identical to the reference.
The report lists every trial.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model, kept_notes
from safetensors.torch import load_file

from refad.api import RunDir, open_run, write_text_atomic
from refad.data import make_demo_dataset
from refad.errors import RefadError

TRAIN = [
    "--image-size", "64", "--backbone", "tf_efficientnet_lite2", "--weights", "none",
    "--batch-size", "4", "--device", "cpu", "--no-progress",
    "--set", "model.num_layers=1", "--set", "model.hidden_dims=[32, 64]",
    "--set", "model.num_heads=4",
]


def train_cmd(root: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "refad", "train", "--root", str(root), "--out", str(out),
            "--epochs", str(epochs), *TRAIN]


def resume_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "refad", "train", "--out", str(out), "--resume",
            "--no-progress"]


def tensors(run: Path, kind: str) -> dict[str, torch.Tensor]:
    folder = RunDir(run)
    meta = folder.read_meta("unified")
    name = meta.files[kind]["name"]
    return load_file(str(run / name))


def identical(a: Path, b: Path) -> bool:
    """Weights, optimiser moments and calibration equal bit for bit."""
    for kind in ("model", "optimizer"):
        ta, tb = tensors(a, kind), tensors(b, kind)
        if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
            return False
    ca = RunDir(a).read_meta("unified").calibration
    cb = RunDir(b).read_meta("unified").calibration
    return ca == cb


def inspect(run: Path) -> tuple[str, int | None, int]:
    """What opening the killed folder shows: (state, epoch, left-over files)."""
    leftovers = len(list(run.glob(".*.tmp"))) if run.exists() else 0
    folder = RunDir(run)
    if not folder.exists():
        return "no run yet (killed before config.json)", None, leftovers
    if not folder.has_checkpoint("unified"):
        return "config only (killed before epoch 1 ended)", None, leftovers
    meta = folder.read_meta("unified")
    named = {entry["name"] for entry in meta.files.values()}
    stray = [p.name for p in run.glob("*-e*.safetensors") if p.name not in named]
    open_run(run, "cpu").model("unified")  # raises if the named files do not load
    return "opens", meta.epoch, leftovers + len(stray)


def trial(
    root: Path, work: Path, epochs: int, kill_at: float, after_config: bool, reference: Path,
    index: int,
) -> dict:
    run = work / f"run-{index:02d}"
    proc = subprocess.Popen(train_cmd(root, run, epochs), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tic = time.perf_counter()
    if after_config:
        while not (run / "config.json").exists() and proc.poll() is None:
            time.sleep(0.01)
    time.sleep(kill_at)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    row: dict = {
        "kill_at_s": round(kill_at, 2), "counted_from": "config.json" if after_config else
        "process start", "since_start_s": round(time.perf_counter() - tic, 2),
        "finished_before_kill": finished_first,
    }
    try:
        row["state"], row["epoch"], row["leftovers"] = inspect(run)
        row["opens"] = True
    except RefadError as exc:
        row.update(state=f"refused: {exc}", epoch=None, leftovers=None, opens=False)
    cmd = resume_cmd(run) if RunDir(run).exists() else train_cmd(root, run, epochs)
    done = subprocess.run(cmd, capture_output=True, text=True)
    row["resumed"] = done.returncode == 0
    row["resume_error"] = done.stderr.strip().splitlines()[-1:] if done.returncode else []
    row["identical"] = bool(row["resumed"] and identical(run, reference))
    row["clean_after"] = row["resumed"] and not list(run.glob(".*.tmp"))
    return row


def render(rows: list[dict], meta: dict) -> str:
    ok = sum(r["opens"] and r["resumed"] and r["identical"] for r in rows)
    lines = [
        "# Faults: SIGKILL at random moments, then open and resume",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; torch {meta['torch']}; seed {meta['seed']}.  ",
        f"Tiny run: demo data (3 categories, {meta['n_train']} training images each), Lite2 "
        f"random weights, 64 px, {meta['epochs']} epochs, batch 4; reference wall time "
        f"{meta['reference_s']:.1f} s, of which {meta['startup_s']:.1f} s until its config.json "
        "appeared (interpreter and torch start-up).",
        "",
        f"**{ok} of {len(rows)}** trials opened, resumed and ended bit-identical to the "
        "uninterrupted run (weights, optimiser moments and calibration).",
        "",
        "| # | killed at (s, counted from) | what the folder showed | epoch | left-overs | "
        "resumed | identical |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        left = "-" if r["leftovers"] is None else str(r["leftovers"])
        lines.append(
            f"| {i} | {r['kill_at_s']:.2f} ({r['counted_from']}) | {r['state']} | {epoch} | "
            f"{left} | "
            f"{'yes' if r['resumed'] else 'NO ' + ' '.join(r['resume_error'])} | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    lines += [
        "",
        "Left-overs are temporaries or tensor files that no manifest names, found right after "
        "the kill; the resume removes them (every trial's folder was clean afterwards: "
        f"{all(r['clean_after'] for r in rows if r['resumed'])}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("faults.md"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="refad-faults-") as tmp:
        work = Path(tmp)
        root = work / "data"
        make_demo_dataset(root, n_train=args.n_train, n_test_good=2, n_test_defect=2, size=64,
                          seed=0)
        reference = work / "reference"
        tic = time.perf_counter()
        proc = subprocess.Popen(train_cmd(root, reference, args.epochs),
                                stdout=subprocess.DEVNULL)
        while not (reference / "config.json").exists() and proc.poll() is None:
            time.sleep(0.01)
        startup_s = time.perf_counter() - tic
        if proc.wait():
            raise SystemExit("the reference training failed")
        reference_s = time.perf_counter() - tic
        rows = []
        for i in range(args.trials):
            after_config = i % 6 != 0
            span = reference_s - startup_s if after_config else startup_s
            kill_at = rng.uniform(0.0, span)
            rows.append(trial(root, work, args.epochs, kill_at, after_config, reference, i))
            r = rows[-1]
            print(f"{i + 1:2d} kill {kill_at:5.2f}s: {r['state']}, epoch {r['epoch']}, "
                  f"resumed {r['resumed']}, identical {r['identical']}", flush=True)
    meta = {
        "command": "python benchmarks/faults.py " + " ".join(sys.argv[1:]),
        "machine": cpu_model(), "torch": torch.__version__, "seed": args.seed,
        "n_train": args.n_train, "epochs": args.epochs, "reference_s": reference_s,
        "startup_s": startup_s,
    }
    write_text_atomic(args.out, render(rows, meta) + kept_notes(args.out))
    write_text_atomic(args.out.with_suffix(".json"),
                      json.dumps({"meta": meta, "trials": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
