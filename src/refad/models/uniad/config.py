"""UniAD's `model` section, its registry entry and its preset (the authors' MVTec-AD config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from refad.config.methods import (
    MAX_HEADS,
    MAX_LAYERS,
    MAX_POOL,
    MAX_WIDTH,
    MAX_WINDOW,
    GridLevel,
    MethodConfig,
    divisible_width,
    odd,
    register_method,
)
from refad.config.presets import register_preset
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig


@register_method("uniad", model="refad.models.uniad.model:UniAD", quantise_as="transformer",
                 authors="refad.models.uniad.authors:FORMAT",
                 summary="UniAD (NeurIPS 2022): neighbour-masked transformer reconstruction",
                 tiny={"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1,
                       "num_decoder_layers": 1, "ffn_dim": 64, "neighbour_window": 3})
class UniADConfig(MethodConfig):
    """Hyper-parameters of UniAD (defaults: the authors' released MVTec-AD configuration)."""

    method: Literal["uniad"] = "uniad"
    hidden_dim: int = Field(256, ge=4, le=MAX_WIDTH)
    num_heads: int = Field(8, ge=1, le=MAX_HEADS)
    num_encoder_layers: int = Field(4, ge=0, le=MAX_LAYERS)
    num_decoder_layers: int = Field(4, ge=1, le=MAX_LAYERS)
    ffn_dim: int = Field(1024, ge=1, le=4 * MAX_WIDTH)
    dropout: float = Field(0.1, ge=0, lt=1)
    position_embedding: Literal["learned", "sine"] = "learned"
    neighbour_window: int = Field(7, ge=1, le=MAX_WINDOW)
    mask_encoder: bool = True  # the authors' neighbor_mask.mask[0]
    mask_decoder_memory: bool = True  # mask[1]: decoder queries -> encoder output
    mask_decoder_previous: bool = True  # mask[2]: decoder queries -> previous decoder output
    jitter_scale: float = Field(20.0, ge=0)
    jitter_prob: float = Field(1.0, ge=0, le=1)
    grid_level: GridLevel = -1  # position in backbone.levels whose grid all levels resize to
    image_pool: int = Field(16, ge=1, le=MAX_POOL)  # image score: max after this average pool

    _odd_window = field_validator("neighbour_window")(odd)

    @model_validator(mode="after")
    def _width_divides(self) -> UniADConfig:
        divisible_width(self.hidden_dim, self.num_heads, "model.hidden_dim:")
        if self.hidden_dim % (4 if self.position_embedding == "sine" else 2) != 0:
            raise ValueError(f"model.hidden_dim: {self.hidden_dim} must be divisible by 4 "
                             "(sine positions) or 2 (learned positions)")
        return self


@register_preset("uniad")
def uniad_preset() -> RunConfig:
    """UniAD (NeurIPS 2022), as in the authors' released MVTec-AD config.

    EfficientNet-B4 stages 1-4 (timm indices 0-3: strides 2-16, 24+32+56+160 channels), no
    local aggregation; AdamW 1e-4 / wd 1e-4, x0.1 at epoch 800 of 1000, batch 8, clip 0.1.
    """
    return RunConfig(
        method="uniad",
        data=MVTecData(image_size=224),
        backbone=BackboneConfig(
            name="tf_efficientnet_b4", levels=[0, 1, 2, 3], aggregate_kernel=1
        ),
        train=TrainConfig(
            epochs=1000, batch_size=8, optimizer="adamw", lr=1e-4, weight_decay=1e-4,
            lr_step_epoch=800, lr_gamma=0.1, grad_clip=0.1, seed=133,
        ),
    )
