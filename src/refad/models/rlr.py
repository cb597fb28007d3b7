"""RLR: Reconstruct features from a Learnable Reference (He et al., ECCV 2024).

Each backbone level gets its own model. Tokens never reach the output through a residual path:
Local Cross Attention (LCA) reads values from a learnable, input-independent reference inside a
local window, and Masked Learnable Key Attention (MLKA) reads the input only from *outside* each
token's window, so the network cannot copy a token (or its anomaly) to its own output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from refad.config_base import StrictModel
from refad.errors import ConfigError
from refad.models.base import FeatureSpec, ReconstructionModel, Scores
from refad.models.blocks import (
    MultiHeadAttention,
    TokenEmbedding,
    feature_jitter,
    neighbourhood_mask,
    to_map,
    to_tokens,
    window_index_table,
    window_size_for,
    windowed_attention,
)
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps

# Paper Table 3 ablations. "rlr" is the method; the others are the rows of the table.
AttentionKind = Literal["rlr", "lca", "mlka", "cross", "self"]
ATTENTION_KINDS: tuple[str, ...] = ("rlr", "lca", "mlka", "cross", "self")
# How the masked attentions are computed; all give the same maps (see RLRConfig).
AttentionImpl = Literal["fast", "windowed", "reference"]


class RLRConfig(StrictModel):
    """Hyper-parameters of RLR (defaults: the paper and the authors' released command)."""

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
    # "windowed": LCA over each query's p x p window only (N*p^2 instead of N^2), MLKA with a
    # cached additive mask. "fast": windowed on CUDA; on other devices LCA is a dense SDPA with
    # a cached additive mask, which the CPU runs faster (2.6x at batch 1: thousands of tiny
    # window matmuls cost more there than the N^2 work they save). "reference": plain masked
    # dense SDPA, the test oracle. Same parameters and the same maps (to float32 rounding);
    # the choice is not part of the model's math.
    attention_impl: AttentionImpl = "fast"


class WindowMasks(NamedTuple):
    """The masks of one level's forward pass, built once per shape and device (never per call).

    `inside`: (N, N) bool, True where the key lies in the query's window (reference path).
    `index`/`valid`: (N, P) window gather table (windowed LCA). `outside_bias`: (N, N) additive
    mask, -inf inside the window and 0 outside, in the attention's compute dtype (MLKA);
    `inside_bias` the opposite (dense LCA off CUDA). None where this forward does not use it.
    """

    inside: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    outside_bias: torch.Tensor | None
    inside_bias: torch.Tensor | None = None


class RLRLayer(nn.Module):
    """One RLR layer: Z = LN(alpha*LCA + MLKA) (no residual from Y); Y' = LN(Z + FFN(Z))."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int, config: RLRConfig) -> None:
        super().__init__()
        self.kind = config.attention
        self.impl = config.attention_impl
        self.alpha = config.alpha
        self.residual = config.residual
        if self.kind in ("rlr", "lca", "cross", "self"):
            self.lca = MultiHeadAttention(dim, num_heads)
        if self.kind in ("rlr", "mlka"):
            self.mlka = MultiHeadAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Linear(ffn_ratio * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def local_cross(self, y: torch.Tensor, ref: torch.Tensor, masks: WindowMasks) -> torch.Tensor:
        """LCA: queries from y, keys and values from the reference inside each window."""
        if self.impl == "reference":
            return self.lca(y, ref, ref, masks.inside)
        if masks.inside_bias is not None:
            return self.lca(y, ref, ref, masks.inside_bias)
        return windowed_attention(self.lca, y, ref, ref, masks.index, masks.valid)

    def masked_key(self, y: torch.Tensor, ref: torch.Tensor, masks: WindowMasks) -> torch.Tensor:
        """MLKA: keys from the reference, values from y, only from OUTSIDE each window."""
        if self.impl == "reference" or masks.outside_bias is None:
            return self.mlka(y, ref, y, ~masks.inside)
        return self.mlka(y, ref, y, masks.outside_bias)

    def attend(self, y: torch.Tensor, ref: torch.Tensor, masks: WindowMasks) -> torch.Tensor:
        """The attention part of the layer, by ablation kind."""
        if self.kind == "self":
            return self.lca(y, y, y)
        if self.kind == "cross":
            return self.lca(y, ref, ref)
        if self.kind == "lca":
            return self.local_cross(y, ref, masks)
        if self.kind == "mlka":
            return self.masked_key(y, ref, masks)
        return self.alpha * self.local_cross(y, ref, masks) + self.masked_key(y, ref, masks)

    def forward(self, y: torch.Tensor, ref: torch.Tensor, masks: WindowMasks) -> torch.Tensor:
        z = self.attend(y, ref, masks)
        if self.residual:
            z = z + y
        z = self.norm1(z)
        return self.norm2(z + self.ffn(z))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in for input x: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class RLRLevel(nn.Module):
    """The reconstruction network of one feature level (H x W tokens of C channels)."""

    def __init__(
        self, channels: int, height: int, width: int, dim: int, window: int, config: RLRConfig
    ) -> None:
        super().__init__()
        self.height, self.width, self.window = height, width, window
        pos = config.position_embedding
        self.input_embed = TokenEmbedding(channels, dim, height, width, pos)
        self.reference = nn.Parameter(torch.randn(height * width, channels))
        self.reference_embed = TokenEmbedding(channels, dim, height, width, pos)
        self.layers = nn.ModuleList(
            RLRLayer(dim, config.num_heads, config.ffn_ratio, config)
            for _ in range(config.num_layers)
        )
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, channels)
        # Shape-derived tables: non-persistent buffers (not in the state_dict), built here once.
        self.register_buffer(
            "window_mask", neighbourhood_mask(height, width, window), persistent=False
        )
        index, valid = window_index_table(height, width, window)
        self.register_buffer("window_index", index, persistent=False)
        self.register_buffer("window_valid", valid, persistent=False)
        impl, kind = config.attention_impl, config.attention
        self.needs_outside_bias = impl != "reference" and kind in ("rlr", "mlka")
        self.dense_lca_off_cuda = impl == "fast" and kind in ("rlr", "lca")
        # (device, dtype, inside) -> additive mask
        self._bias_cache: dict[tuple[torch.device, torch.dtype, bool], torch.Tensor] = {}

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RLRLevel:
        self._bias_cache = {}  # device/dtype moves invalidate the cached additive masks
        return super()._apply(fn, recurse)

    def additive_mask(self, dtype: torch.dtype, inside: bool) -> torch.Tensor:
        """0 where a key may be read, -inf where not: `inside` the window (LCA) or outside it
        (MLKA). Cached per device, dtype and side.

        Only eager calls fill the cache. Inside torch.compile the mask is built in the graph
        (one N x N fill per step, fused by the compiler): a tensor made there belongs to the
        graph, and CUDA-graph replay would overwrite a cached copy on the next step.
        """
        key = (self.window_mask.device, dtype, inside)
        bias = self._bias_cache.get(key)
        if bias is None:
            blocked = ~self.window_mask if inside else self.window_mask
            bias = torch.zeros(self.window_mask.shape, device=key[0], dtype=dtype)
            bias = bias.masked_fill(blocked, float("-inf"))
            if not torch.compiler.is_compiling():
                self._bias_cache[key] = bias
        return bias

    def masks(self, y: torch.Tensor) -> WindowMasks:
        """This forward's masks for embedded tokens y (their device and compute dtype)."""
        dtype = _compute_dtype(y)
        outside = self.additive_mask(dtype, inside=False) if self.needs_outside_bias else None
        dense_lca = self.dense_lca_off_cuda and y.device.type != "cuda"
        inside = self.additive_mask(dtype, inside=True) if dense_lca else None
        return WindowMasks(self.window_mask, self.window_index, self.window_valid, outside, inside)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) input tokens -> (B, N, C) reconstruction."""
        y = self.input_embed(tokens)
        ref = self.reference_embed(self.reference.to(tokens.dtype))[None]  # once per forward
        masks = self.masks(y)
        for layer in self.layers:
            y = layer(y, ref, masks)
        return self.out_proj(self.out_norm(y))


class RLR(ReconstructionModel):
    """RLR over several feature levels, one independent `RLRLevel` each."""

    method = "rlr"

    def __init__(self, spec: FeatureSpec, config: RLRConfig | None = None) -> None:
        config = config or RLRConfig()
        super().__init__(spec, config)
        dims = config.hidden_dims or [128 * 2 ** (lvl - 1) for lvl in spec.levels]
        if len(dims) != len(spec.levels):
            raise ConfigError(
                f"model.hidden_dims has {len(dims)} entries for {len(spec.levels)} levels"
            )
        self.levels = nn.ModuleList()
        for c, (h, w), d in zip(spec.channels, spec.shapes, dims, strict=True):
            if d % config.num_heads != 0 or d % 4 != 0:
                raise ConfigError(f"hidden width {d} must divide by num_heads and by 4")
            window = window_size_for(max(h, w), config.windows)
            self.levels.append(RLRLevel(c, h, w, d, window, config))

    def with_attention_impl(self, impl: AttentionImpl) -> RLR:
        """A copy with the same weights, device and mode, computing attention by `impl`.

        The fast and reference paths share every parameter, so this is how the fast path is
        checked against the plain masked one (tests, benchmarks).
        """
        config = self.config.model_copy(update={"attention_impl": impl})
        copy = RLR(self.spec, config)
        param = next(self.parameters())
        copy.to(device=param.device, dtype=param.dtype)
        copy.load_state_dict(self.state_dict())
        buffers = dict(copy.named_buffers())
        with torch.no_grad():  # non-persistent tables too (e.g. an imported positional table)
            for name, buf in self.named_buffers():
                buffers[name].copy_(buf)
        return copy.train(self.training)

    def targets(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return levels

    def reconstruct(
        self, targets: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        out = []
        for net, target in zip(self.levels, targets, strict=True):
            tokens = to_tokens(target)
            if self.training:
                tokens = feature_jitter(tokens, self.config.jitter_scale, generator=generator)
            out.append(to_map(net(tokens), net.height, net.width))
        return out

    def loss(
        self, levels: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        targets = self.targets(levels)
        recs = self.reconstruct(targets, generator)
        total = targets[0].new_zeros(())
        for rec, target in zip(recs, targets, strict=True):
            cos = F.cosine_similarity(rec, target, dim=1)
            total = total + F.mse_loss(rec, target) + (1.0 - cos).mean()
        return total

    def score_reconstruction(
        self, targets: list[torch.Tensor], recs: list[torch.Tensor]
    ) -> Scores:
        """Per-level MSE + (1 - cos) maps, upsampled and averaged; max after a Gaussian blur."""
        size = self.spec.image_size
        maps = torch.stack(
            [
                upsample_maps(mse_cosine_map(rec, target), size, align_corners=True)
                for rec, target in zip(recs, targets, strict=True)
            ]
        ).mean(dim=0)
        smoothed = gaussian_blur(maps, self.config.gaussian_sigma)
        return Scores(maps=maps, image=max_score(smoothed))
