"""The Scorer of one trained unit of a run folder, for code that brings its own images."""

from __future__ import annotations

from pathlib import Path

import torch

from refad.inference.scorer import Scorer
from refad.runs import UNIFIED, TrainedRun, open_run


def scorer(
    run: Path | str | TrainedRun,
    unit: str = UNIFIED,
    device: str | torch.device | None = None,
    amp: bool = False,
    compile_mode: str | None = None,
) -> Scorer:
    """The Scorer of one trained unit of a run (backbone included): what `refad test` and
    `refad predict` score with, for code that brings its own images or features."""
    opened = run if isinstance(run, TrainedRun) else open_run(run, device)
    model, _ = opened.model(unit)
    return Scorer(model, opened.device, opened.extractor, amp, compile_mode)
