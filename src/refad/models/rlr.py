"""RLR: Reconstruct features from a Learnable Reference (He et al., ECCV 2024).

Each backbone level gets its own model. Tokens never reach the output through a residual path:
Local Cross Attention (LCA) reads values from a learnable, input-independent reference inside a
local window, and Masked Learnable Key Attention (MLKA) reads the input only from *outside* each
token's window, so the network cannot copy a token (or its anomaly) to its own output.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field

from refad.config_base import StrictModel
from refad.errors import ConfigError
from refad.models.base import FeatureSpec, ReconstructionModel, Scores
from refad.models.blocks import (
    MultiHeadAttention,
    TokenEmbedding,
    feature_jitter,
    neighbourhood_mask,
    window_size_for,
)
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps

# Paper Table 3 ablations. "rlr" is the method; the others are the rows of the table.
AttentionKind = Literal["rlr", "lca", "mlka", "cross", "self"]
ATTENTION_KINDS: tuple[str, ...] = ("rlr", "lca", "mlka", "cross", "self")


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


class RLRLayer(nn.Module):
    """One RLR layer: Z = LN(alpha*LCA + MLKA) (no residual from Y); Y' = LN(Z + FFN(Z))."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int, config: RLRConfig) -> None:
        super().__init__()
        self.kind = config.attention
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

    def attend(
        self, y: torch.Tensor, ref: torch.Tensor, window: torch.Tensor
    ) -> torch.Tensor:
        """The attention part of the layer, by ablation kind. `window`: (N, N) bool."""
        if self.kind == "self":
            return self.lca(y, y, y)
        if self.kind == "cross":
            return self.lca(y, ref, ref)
        if self.kind == "lca":
            return self.lca(y, ref, ref, window)
        if self.kind == "mlka":
            return self.mlka(y, ref, y, ~window)
        return self.alpha * self.lca(y, ref, ref, window) + self.mlka(y, ref, y, ~window)

    def forward(self, y: torch.Tensor, ref: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        z = self.attend(y, ref, window)
        if self.residual:
            z = z + y
        z = self.norm1(z)
        return self.norm2(z + self.ffn(z))


class RLRLevel(nn.Module):
    """The reconstruction network of one feature level (H x W tokens of C channels)."""

    def __init__(
        self, channels: int, height: int, width: int, dim: int, window: int, config: RLRConfig
    ) -> None:
        super().__init__()
        self.height, self.width, self.window = height, width, window
        self.input_embed = TokenEmbedding(channels, dim, height, width)
        self.reference = nn.Parameter(torch.randn(height * width, channels))
        self.reference_embed = TokenEmbedding(channels, dim, height, width)
        self.layers = nn.ModuleList(
            RLRLayer(dim, config.num_heads, config.ffn_ratio, config)
            for _ in range(config.num_layers)
        )
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, channels)
        self.register_buffer(
            "window_mask", neighbourhood_mask(height, width, window), persistent=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) input tokens -> (B, N, C) reconstruction."""
        y = self.input_embed(tokens)
        ref = self.reference_embed(self.reference.to(tokens.dtype))[None]  # once per forward
        for layer in self.layers:
            y = layer(y, ref, self.window_mask)
        return self.out_proj(self.out_norm(y))


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


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

    def targets(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return levels

    def reconstruct(
        self, targets: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        out = []
        for net, target in zip(self.levels, targets, strict=True):
            tokens = _to_tokens(target)
            if self.training:
                tokens = feature_jitter(tokens, self.config.jitter_scale, generator=generator)
            out.append(_to_map(net(tokens), net.height, net.width))
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

    def score(self, levels: list[torch.Tensor]) -> Scores:
        targets = self.targets(levels)
        recs = self.reconstruct(targets)
        size = self.spec.image_size
        maps = torch.stack(
            [
                upsample_maps(mse_cosine_map(rec, target), size, align_corners=True)
                for rec, target in zip(recs, targets, strict=True)
            ]
        ).mean(dim=0)
        smoothed = gaussian_blur(maps, self.config.gaussian_sigma)
        return Scores(maps=maps, image=max_score(smoothed))
