"""Training: the loop on cached features, data parallelism, and fit/resume of a run folder."""

from refad.training.loop import (
    DeviceFeatures,
    StepSettings,
    compiled_loss,
    make_optimizer,
    run_epoch,
    train_steps,
)
from refad.training.train import UnitResult, extract_features, fit, group_units, train_unit

__all__ = [
    "DeviceFeatures",
    "StepSettings",
    "UnitResult",
    "compiled_loss",
    "extract_features",
    "fit",
    "group_units",
    "make_optimizer",
    "run_epoch",
    "train_steps",
    "train_unit",
]
