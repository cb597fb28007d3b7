"""The `model` section of a run: one typed config per method, told apart by `method`.

They live in the configuration layer (not beside the networks) so that `RunConfig` can be one
discriminated union validated once, and the models only receive an already valid config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

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


class RLRConfig(StrictModel):
    """Hyper-parameters of RLR (defaults: the paper and the authors' released command)."""

    method: Literal["rlr"] = "rlr"
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    hidden_dims: list[int] | None = None  # None: 128 * 2**(level-1) per timm level index
    ffn_ratio: int = Field(4, ge=1)
    alpha: float = Field(2.0, gt=0)
    attention: AttentionKind = "rlr"
    residual: bool = False  # True restores the identity shortcut (ablation)
    windows: dict[int, int] = Field(default_factory=lambda: {16: 5, 32: 7, 64: 11})
    jitter_scale: float = Field(4.0, ge=0)
    gaussian_sigma: float = Field(4.0, ge=0)
    # "integer": the authors' table (integer positions, x half first); "normalised": DETR form
    position_embedding: Literal["integer", "normalised"] = "integer"
    attention_impl: AttentionImpl = "fast"


class UniADConfig(StrictModel):
    """Hyper-parameters of UniAD (defaults: the authors' released MVTec-AD configuration)."""

    method: Literal["uniad"] = "uniad"
    hidden_dim: int = Field(256, ge=4)
    num_heads: int = Field(8, ge=1)
    num_encoder_layers: int = Field(4, ge=0)
    num_decoder_layers: int = Field(4, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    position_embedding: Literal["learned", "sine"] = "learned"
    neighbour_window: int = Field(7, ge=1)
    mask_encoder: bool = True  # the authors' neighbor_mask.mask[0]
    mask_decoder_memory: bool = True  # mask[1]: decoder queries -> encoder output
    mask_decoder_previous: bool = True  # mask[2]: decoder queries -> previous decoder output
    jitter_scale: float = Field(20.0, ge=0)
    jitter_prob: float = Field(1.0, ge=0, le=1)
    grid_level: int = -1  # position in backbone.levels whose grid all levels are resized to
    image_pool: int = Field(16, ge=1)  # image score: max after this average pool

    _odd_window = field_validator("neighbour_window")(odd)


class CRADConfig(StrictModel):
    """Hyper-parameters of CRAD (defaults: the paper's CRAD; CRAD-S sets expansion=216)."""

    method: Literal["crad"] = "crad"
    local_grid: int = Field(8, ge=1)
    global_grid: int = Field(4, ge=1)
    num_blocks: int = Field(11, ge=0)
    expansion: int = Field(864, ge=1)
    se_reduction: int = Field(4, ge=1)
    noise_std: float = Field(0.0598, ge=0)  # coordinate noise during training
    noise_prob: float = Field(0.5, ge=0, le=1)  # drawn once per training step
    mse_weight: float = 0.3  # output refinement: sim = w_m * m + w_c * cos
    cos_weight: float = 0.7
    mse_coef: float = Field(0.05, ge=0)  # m = 1 - round(clip(mse_coef * mse, 0, 1))
    grid_lr: float = Field(0.1, gt=0)  # learning rate of both grids (network: train.lr)
    smooth_kernel: int = Field(21, ge=1)  # evaluation: k x k average pool on the upsampled map
    image_pool: int = Field(32, ge=1)  # image score: max after this average pool
    grid_level: int = 0  # position in backbone.levels whose grid all levels are resized to

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
