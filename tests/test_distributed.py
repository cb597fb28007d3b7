"""Data-parallel training: 2 gloo processes under torchrun == 1 process, same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from refad.models.layers.jitter import draw_normal
from refad.runs import RunDir
from refad.training.distributed import DistContext
from refad.training.noise import BatchShard


def test_shards_cover_the_batch_without_overlap() -> None:
    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [DistContext(r, world).shard(n) for r in range(world)]
            rows = [i for a, b in parts for i in range(a, b)]
            assert rows == list(range(n))


def test_sharded_noise_equals_global_noise() -> None:
    full = draw_normal((5, 3, 2), torch.Generator().manual_seed(7), torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = draw_normal((3, 3, 2), BatchShard(g1, 0, 5), torch.device("cpu"))
    b = draw_normal((2, 3, 2), BatchShard(g2, 3, 5), torch.device("cpu"))
    assert torch.equal(torch.cat([a, b]), full)


def test_two_process_gloo_run_matches_single_process(
    demo_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "refad", "train", "--out", str(out), "--data", "mvtec", "--root", str(demo_root),
        "--image-size", "64", "--backbone", "tf_efficientnet_lite2", "--weights", "none",
        "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "model.num_layers=1", "--set", "model.hidden_dims=[32, 64]",
        "--set", "model.num_heads=4",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = load_file(str(RunDir(trained_run).weights_path()))
    ddp = load_file(str(RunDir(out).weights_path()))
    assert single.keys() == ddp.keys()
    # A key-projection bias adds the same value to every score of a query, which softmax
    # ignores: its true gradient is exactly zero, so Adam turns float round-off into steps of
    # size lr there, in either run. Every other tensor must agree.
    checked = [k for k in single if not k.endswith("k_proj.bias")]
    assert len(checked) > 0.9 * len(single)
    # Summation order differs between one process and two, and Adam divides by the gradient's
    # running RMS, so a rare element may drift by a fraction of one step (lr = 1e-4); a wrong
    # shard or noise stream moves almost every element by whole steps.
    moved = 0
    for key in checked:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-4)
        moved += int(((ddp[key] - single[key]).abs() > 1e-6).sum())
    assert moved < 1e-3 * sum(single[k].numel() for k in checked)
