"""Run folders: their layout, creation and resume, checkpoints, opening for scoring, imports."""

from refad.atomic import write_json
from refad.runs.checkpoint import (
    CheckpointMeta,
    backbone_identity,
    load_model,
    read_meta,
    save_checkpoint,
    spec_to_dict,
)
from refad.runs.layout import UNIFIED, unit_for_category, unit_path
from refad.runs.rundir import RunDir, TrainedRun, open_run

__all__ = [
    "UNIFIED",
    "CheckpointMeta",
    "RunDir",
    "TrainedRun",
    "backbone_identity",
    "load_model",
    "open_run",
    "read_meta",
    "save_checkpoint",
    "spec_to_dict",
    "unit_for_category",
    "unit_path",
    "write_json",
]
