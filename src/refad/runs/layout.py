"""The names of every file and folder in a run folder: the one place that knows them.

A run folder holds `config.json` and, per trained unit, a checkpoint (weights, optimiser
moments, metadata). A unified run has one unit, `unified`, whose checkpoint sits in the run
folder itself; a per-category run keeps one unit per category under `categories/<name>/`.
"""

from __future__ import annotations

import json
from pathlib import Path

from refad.errors import CheckpointError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
TEST_SCORES_JSON = "test_scores.json"  # every test image's score, for reports
REPORT_HTML = "report.html"
IMPORTED_FILE = "imported.json"
TRAINING_DATA_FILE = "training_data.json"  # what the run trained on, checked by --resume
CATEGORIES_DIR = "categories"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"

UNIFIED = "unified"


def is_run_folder(folder: Path) -> bool:
    """A refad run folder: its config.json is a run's (method, backbone, train), so that a
    project folder with a config.json of its own is not taken for one (writers that must never
    write into or over a run, such as `refad export`, ask this)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"method", "backbone", "train"} <= config.keys()


def unit_path(run_dir: Path, unit: str) -> Path:
    """Folder of a unit's checkpoint: the run folder itself when unified; never outside it
    (a unit named by a category from a csv must not reach another run's files)."""
    if unit == UNIFIED:
        return Path(run_dir)
    if unit in ("", ".", "..") or Path(unit).name != unit or "\\" in unit:
        raise CheckpointError(f"{run_dir}: unit {unit!r} would lie outside the run folder")
    return Path(run_dir) / CATEGORIES_DIR / unit


def unit_for_category(mode: str, category: str) -> str:
    """The unit that scores `category` in a run trained in `mode`."""
    return UNIFIED if mode == "unified" else category
