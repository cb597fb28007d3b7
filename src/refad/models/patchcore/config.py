"""PatchCore's `model` section, its registry entry and its preset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from refad.config.methods import MethodConfig, register_method
from refad.config.presets import register_preset
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig


@register_method("patchcore", model="refad.models.patchcore.model:PatchCore",
                 summary="PatchCore (CVPR 2022): training-free patch memory, one pass",
                 tiny={"coreset_ratio": 0.1})
class PatchCoreConfig(MethodConfig):
    """Hyper-parameters of PatchCore (defaults: the paper's 1% coreset, 128-d projection)."""

    method: Literal["patchcore"] = "patchcore"
    grid_level: int = Field(0, ge=-8, le=7)  # position in backbone.levels giving the grid
    coreset_ratio: float = Field(0.01, gt=0, le=1)  # share of all training patches kept
    projection_dim: int = Field(128, ge=0, le=4096)  # coreset distances (0: no projection)
    oversample: float = Field(4.0, ge=1, le=100)  # first stage keeps this x its share
    chunk_patches: int = Field(16384, ge=64, le=1 << 22)  # patches per first-stage chunk
    embed_dim: int | None = Field(None, ge=1, le=8192)  # average channels down to this
    gaussian_sigma: float = Field(4.0, ge=0, le=64)
    image_score: Literal["max", "reweighted"] = "max"  # max of the smoothed map, or the paper's
    reweight_neighbours: int = Field(9, ge=1, le=1000)
    query_chunk: int = Field(4096, ge=1, le=1 << 20)  # test patches per distance matmul
    # unified runs: score each picture against the bank rows of one product only - the
    # product of its nearest training picture by mean patch feature (no label needed when
    # scoring), so a defect cannot find a look-alike among another product's normal patches
    route: bool = False


@register_preset("patchcore")
def patchcore_preset() -> RunConfig:
    """PatchCore (CVPR 2022): WideResNet-50 layers 2 and 3 (timm indices 2, 3), 3 x 3
    neighbourhood aggregation, a 1% greedy coreset. Fitted in one pass (`train.epochs` 1);
    10% of the training images are held out to calibrate the thresholds, since the bank's own
    images score near zero."""
    return RunConfig(
        method="patchcore",
        data=MVTecData(image_size=256),
        backbone=BackboneConfig(name="wide_resnet50_2", levels=[2, 3], aggregate_kernel=3),
        train=TrainConfig(epochs=1, batch_size=32, val_fraction=0.1, seed=0),
        model=PatchCoreConfig(embed_dim=1024),
    )
