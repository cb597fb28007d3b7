"""`refad test`: evaluate a run folder and write its metrics files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refad.config import DataConfig
from refad.inference.evaluate import evaluate_run
from refad.reporting.tables import metrics_markdown
from refad.runs import open_run


def evaluate(
    run_dir: Path | str,
    device: str | torch.device | None = None,
    data: DataConfig | None = None,
    *args: Any,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a run folder and write `metrics.json` and `metrics.md` into it.

    `args`/`options`: those of `refad.inference.evaluate_run` after `data` (batch_size,
    metrics_mode, progress, amp, compile_mode)."""
    run = open_run(run_dir, device)
    with run.folder.lock("test"):
        result = evaluate_run(run, data, *args, **options)
        run.folder.write_metrics(result, metrics_markdown(result))
    return result
