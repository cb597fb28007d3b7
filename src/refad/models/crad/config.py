"""CRAD's `model` section, its registry entry and its presets (CRAD and CRAD-S)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from refad.config.methods import (
    MAX_LAYERS,
    MAX_POOL,
    MAX_WIDTH,
    MAX_WINDOW,
    GridLevel,
    MethodConfig,
    odd,
    register_method,
)
from refad.config.presets import register_preset
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig


@register_method("crad", model="refad.models.crad.model:CRAD",
                 authors="refad.models.crad.authors:FORMAT",
                 summary="CRAD (ECCV 2024): continuous grid reconstruction",
                 tiny={"num_blocks": 1, "expansion": 24})
class CRADConfig(MethodConfig):
    """Hyper-parameters of CRAD (defaults: the paper's CRAD; CRAD-S sets expansion=216)."""

    method: Literal["crad"] = "crad"
    # local grid: C x g x g cells; global: C*H*W x G x G (a whole map per cell, so tight)
    local_grid: int = Field(8, ge=1, le=256)
    global_grid: int = Field(4, ge=1, le=32)
    num_blocks: int = Field(11, ge=0, le=MAX_LAYERS)
    expansion: int = Field(864, ge=1, le=MAX_WIDTH)
    se_reduction: int = Field(4, ge=1, le=MAX_WIDTH)
    noise_std: float = Field(0.0598, ge=0)  # coordinate noise during training
    noise_prob: float = Field(0.5, ge=0, le=1)  # drawn once per training step
    mse_weight: float = 0.3  # output refinement: sim = w_m * m + w_c * cos
    cos_weight: float = 0.7
    mse_coef: float = Field(0.05, ge=0)  # m = 1 - round(clip(mse_coef * mse, 0, 1))
    grid_lr: float = Field(0.1, gt=0)  # learning rate of both grids (network: train.lr)
    smooth_kernel: int = Field(21, ge=1, le=MAX_WINDOW)  # evaluation: k x k mean, upsampled map
    image_pool: int = Field(32, ge=1, le=MAX_POOL)  # image score: max after this average pool
    grid_level: GridLevel = 0  # position in backbone.levels whose grid all levels resize to

    _odd_kernel = field_validator("smooth_kernel")(odd)


@register_preset("crad")
def crad_preset(expansion: int = 864, seed: int = 2) -> RunConfig:
    """CRAD (ECCV 2024): EfficientNet-B4 stages 3-4 (timm indices 2, 3) at stride 8.

    AdamW with the network at 1e-3 and both grids at 0.1 (`model.grid_lr`), torch's default
    weight decay 0.01 (the authors pass none), x0.1 at epoch 40 of 50, batch 64, clip 0.1.
    """
    return RunConfig(
        method="crad",
        data=MVTecData(image_size=224),
        backbone=BackboneConfig(name="tf_efficientnet_b4", levels=[2, 3], aggregate_kernel=1),
        train=TrainConfig(
            epochs=50, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.01,
            lr_step_epoch=40, lr_gamma=0.1, grad_clip=0.1, seed=seed,
        ),
        model=CRADConfig(expansion=expansion),
    )


@register_preset("crad-s")
def crad_s_preset() -> RunConfig:
    """CRAD-S: CRAD with bottleneck expansion 216 instead of 864 (authors' crad-s config)."""
    return crad_preset(expansion=216, seed=0)
