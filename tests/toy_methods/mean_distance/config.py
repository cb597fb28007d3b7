"""The mean-distance method's `model` section, registry entry and preset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from refad.config.methods import MethodConfig, register_method
from refad.config.presets import register_preset
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig


@register_method("mean_distance", model="toy_methods.mean_distance.model:MeanDistance",
                 summary="test only: distance of each patch to the mean normal patch",
                 tiny={"sigma": 1.0})
class MeanDistanceConfig(MethodConfig):
    """One smoothing width; everything else is the normal features' mean."""

    method: Literal["mean_distance"] = "mean_distance"
    sigma: float = Field(2.0, ge=0, le=16)


@register_preset("mean_distance")
def mean_distance_preset() -> RunConfig:
    """Lite0 levels 2 and 3, one pass."""
    return RunConfig(
        method="mean_distance",
        data=MVTecData(image_size=64),
        backbone=BackboneConfig(name="tf_efficientnet_lite0", levels=[2, 3]),
        train=TrainConfig(epochs=1, batch_size=8, val_fraction=0.25, seed=0),
        model=MeanDistanceConfig(),
    )
