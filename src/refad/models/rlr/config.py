"""RLR's `model` section, its registry entry and its preset (the authors' released command)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from refad.config.methods import (
    MAX_HEADS,
    MAX_LAYERS,
    MapSide,
    MethodConfig,
    Width,
    Window,
    divisible_width,
    register_method,
)
from refad.config.presets import register_preset
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig

# Paper Table 3 ablations of RLR. "rlr" is the method; the others are the rows of the table.
AttentionKind = Literal["rlr", "lca", "mlka", "cross", "self"]
# How RLR's masked attentions are computed; every choice gives the same maps (tests hold them
# equal). "fast" picks per device when the model is built: the window gather on CUDA, halo
# blocks elsewhere (LCA over 8 x 8 query blocks and their window-grown key blocks; levels too
# small for blocks to save work use a dense attention with an additive mask; thousands of tiny
# window matmuls cost the CPU more than the N^2 work they save). "windowed", "halo" and
# "dense" force one; "reference" is plain masked dense attention, the test oracle.
AttentionImpl = Literal["fast", "windowed", "halo", "dense", "reference"]



@register_method("rlr", model="refad.models.rlr.model:RLR", quantise_as="transformer",
                 authors="refad.models.rlr.authors:FORMAT",
                 summary="RLR (ECCV 2024): reconstruction from a learnable reference",
                 tiny={"num_layers": 2, "hidden_dims": [16, 32], "num_heads": 4})
class RLRConfig(MethodConfig):
    """Hyper-parameters of RLR (defaults: the paper and the authors' released command)."""

    method: Literal["rlr"] = "rlr"
    num_layers: int = Field(4, ge=1, le=MAX_LAYERS)
    num_heads: int = Field(8, ge=1, le=MAX_HEADS)
    # None: 128 * 2**(level-1) per timm level index; else one width per backbone level
    hidden_dims: list[Width] | None = Field(None, min_length=1, max_length=5)
    ffn_ratio: int = Field(4, ge=1, le=16)
    alpha: float = Field(2.0, gt=0)
    attention: AttentionKind = "rlr"
    residual: bool = False  # True restores the identity shortcut (ablation)
    # map side (tokens) -> attention window; other sides scale the nearest entry
    windows: dict[MapSide, Window] = Field(default_factory=lambda: {16: 5, 32: 7, 64: 11},
                                           min_length=1, max_length=32)
    jitter_scale: float = Field(4.0, ge=0)
    gaussian_sigma: float = Field(4.0, ge=0, le=64)  # its kernel spans 8 sigma + 1 pixels
    # "integer": the authors' table (integer positions, x half first); "normalised": DETR form
    position_embedding: Literal["integer", "normalised"] = "integer"
    attention_impl: AttentionImpl = "fast"

    @field_validator("windows")
    @classmethod
    def _windows_fit(cls, v: dict[int, int]) -> dict[int, int]:
        """Odd (centred on its token) and narrower than its map: a window covering the whole
        map leaves MLKA no key outside it."""
        for side, window in v.items():
            if window % 2 == 0:
                raise ValueError(f"window {window} for {side}x{side} maps must be odd")
            if window >= side:
                raise ValueError(f"window {window} for {side}x{side} maps must be narrower "
                                 "than the map")
        return v

    @model_validator(mode="after")
    def _widths_divide(self) -> RLRConfig:
        for width in self.hidden_dims or ():
            if width % 4 != 0:  # the 2-D position table splits a width in four
                raise ValueError(f"model.hidden_dims: width {width} is not divisible by 4")
            divisible_width(width, self.num_heads, "model.hidden_dims: width")
        return self

    def check_levels(self, levels: list[int]) -> None:
        """One width per backbone level, each divisible by the heads (the default widths
        follow the level indices)."""
        super().check_levels(levels)
        dims = self.hidden_dims
        if dims is not None and len(dims) != len(levels):
            raise ValueError(f"model.hidden_dims: {len(dims)} width(s) for {len(levels)} "
                             f"backbone levels {levels} (one per level)")
        if dims is None and max(levels) > 4:  # ViT blocks: 64 << 11 would be 131072 wide
            raise ValueError(f"model.hidden_dims: the default widths (64 << level) are for "
                             f"CNN levels 0..4, not {levels}; give one width per level")
        for width in dims or [64 << lvl for lvl in levels]:  # the model's default widths
            if width % self.num_heads:
                raise ValueError(f"model.num_heads: {self.num_heads} does not divide "
                                 f"the hidden width {width} (set model.hidden_dims too)")


@register_preset("rlr")
def rlr_preset() -> RunConfig:
    """RLR (ECCV 2024), as in the authors' released command."""
    return RunConfig(
        method="rlr",
        data=MVTecData(image_size=256),
        backbone=BackboneConfig(name="tf_efficientnet_b6", levels=[2, 3], aggregate_kernel=3),
        train=TrainConfig(epochs=200, batch_size=4, optimizer="adam", lr=1e-4, seed=3407),
    )
