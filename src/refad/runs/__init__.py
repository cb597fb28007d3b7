"""Run folders: their layout, creation and resume, checkpoints, opening for scoring, imports.

Names load on first use, so that `refad.runs.lock` (a file lock, also used on output folders)
serves the torch-free `refad predict --model` without importing the checkpoint code.
"""

from __future__ import annotations

from refad.lazy import lazy_attributes

_EXPORTS = {
    "CheckpointMeta": "checkpoint", "backbone_identity": "checkpoint", "load_model": "checkpoint",
    "checkpoint_identity": "checkpoint",
    "read_meta": "checkpoint", "save_checkpoint": "checkpoint", "spec_to_dict": "checkpoint",
    "UNIFIED": "layout", "unit_for_category": "layout", "unit_path": "layout",
    "RunDir": "rundir", "TrainedRun": "rundir", "open_run": "rundir",
    "check_scorable": "rundir",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes("refad.runs", _EXPORTS)
