"""The `model` section of a run: one typed config per method, told apart by `method`.

They live in the configuration layer (not beside the networks) so that `RunConfig` can be one
discriminated union validated once, and the models only receive an already valid config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from refad.config.base import StrictModel

# Paper Table 3 ablations of RLR. "rlr" is the method; the others are the rows of the table.
AttentionKind = Literal["rlr", "lca", "mlka", "cross", "self"]
# How RLR's masked attentions are computed; every choice gives the same maps (tests hold them
# equal). "fast" picks per device when the model is built: the window gather on CUDA, halo
# blocks elsewhere (LCA over 8 x 8 query blocks and their window-grown key blocks; levels too
# small for blocks to save work use a dense attention with an additive mask; thousands of tiny
# window matmuls cost the CPU more than the N^2 work they save). "windowed", "halo" and
# "dense" force one; "reference" is plain masked dense attention, the test oracle.
AttentionImpl = Literal["fast", "windowed", "halo", "dense", "reference"]


def odd(v: int) -> int:
    """Validator body shared by every odd-sized window or kernel field."""
    if v % 2 == 0:
        raise ValueError("must be odd")
    return v


# Ranges of the size fields: far above every paper's setting, far below what exhausts memory or
# time (`--set model.local_grid=100000` asked for 6 TB; a width of 0 divided by zero), so a
# typo is one line at validation, before any work. A feature map is at most 2048 / 4 = 512
# tokens a side (data.image_size <= 2048, the finest timm level has stride 2 or 4).
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_WIDTH = 8192  # transformer widths
MAX_MAP_SIDE = 1024  # tokens of a feature-map side (a window table's key)
MAX_WINDOW = 255  # attention / neighbour windows, smoothing kernels (odd)
MAX_POOL = 2048  # image-score pools: no map exceeds the largest input image
GridLevel = Annotated[int, Field(ge=-5, le=4)]  # a position in backbone.levels (<= 5 levels)
Width = Annotated[int, Field(ge=4, le=MAX_WIDTH)]
MapSide = Annotated[int, Field(ge=2, le=MAX_MAP_SIDE)]
Window = Annotated[int, Field(ge=1, le=MAX_WINDOW)]


def divisible_width(width: int, heads: int, field: str) -> None:
    """Heads split a width evenly; a width that does not divide failed in the model build."""
    if width % heads != 0:
        raise ValueError(f"{field} {width} is not divisible by model.num_heads {heads} "
                         "(each head takes an equal share of the width)")


class RLRConfig(StrictModel):
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


class UniADConfig(StrictModel):
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


class CRADConfig(StrictModel):
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


class PatchCoreConfig(StrictModel):
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


ModelConfig = Annotated[
    RLRConfig | UniADConfig | CRADConfig | PatchCoreConfig, Field(discriminator="method")
]
METHOD_CONFIGS: dict[str, type[StrictModel]] = {
    "rlr": RLRConfig,
    "uniad": UniADConfig,
    "crad": CRADConfig,
    "patchcore": PatchCoreConfig,
}
