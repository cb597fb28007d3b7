"""Shared fixtures: a tiny generated dataset and a tiny trained run (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import toy_methods.mean_distance.config  # noqa: F401  (registers a test-only method folder)

from refad.config import METHODS, RunConfig, apply_overrides
from refad.config.presets import preset
from refad.data import make_demo_dataset

TINY_MODEL = ['model.num_layers=1', 'model.hidden_dims=[32, 64]', 'model.num_heads=4']

# A few-thousand-parameter model config per registered method (its registry entry's `tiny`),
# for tests on random features.
SMALL_MODELS: dict[str, dict] = {name: dict(entry.tiny) for name, entry in METHODS.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of `a` against `b`, in float32 on the CPU (any dtypes or devices)."""
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm()).item()


def tiny_config(root: Path, *extra: str, epochs: int = 2) -> RunConfig:
    """RLR on a random-init Lite2 at 64 px with a one-layer, narrow model: seconds to train.
    `extra` settings replace the defaults of the same field (a field is set once)."""
    defaults = [
        f"data.root={root}",
        "data.image_size=64",
        "backbone.name=tf_efficientnet_lite2",
        "backbone.weights=none",
        f"train.epochs={epochs}",
        "train.batch_size=4",
        "device=cpu",
        *TINY_MODEL,
    ]
    replaced = {item.split("=", 1)[0] for item in extra}
    return apply_overrides(
        preset("rlr"), [*(d for d in defaults if d.split("=", 1)[0] not in replaced), *extra]
    )


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(root, n_train=6, n_test_good=3, n_test_defect=3, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def trained_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refad.training import fit

    run = tmp_path_factory.mktemp("runs") / "tiny"
    fit(tiny_config(demo_root), run, progress=False)
    return run
