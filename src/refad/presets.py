"""Method presets: each paper's backbone, levels, input size, optimiser and schedule."""

from __future__ import annotations

from collections.abc import Callable

from refad.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
from refad.errors import ConfigError


def rlr_preset() -> RunConfig:
    """RLR (ECCV 2024), as in the authors' released command."""
    return RunConfig(
        method="rlr",
        data=DataConfig(image_size=256),
        backbone=BackboneConfig(name="tf_efficientnet_b6", levels=[2, 3], aggregate_kernel=3),
        train=TrainConfig(epochs=200, batch_size=4, optimizer="adam", lr=1e-4, seed=3407),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"rlr": rlr_preset}


def preset(method: str) -> RunConfig:
    """The default RunConfig of a method."""
    try:
        return PRESETS[method]()
    except KeyError:
        raise ConfigError(
            f"unknown method {method!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
