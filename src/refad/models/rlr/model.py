"""RLR: Reconstruct features from a Learnable Reference (He et al., ECCV 2024).

Each backbone level gets its own model. Tokens never reach the output through a residual path:
Local Cross Attention (LCA) reads values from a learnable, input-independent reference inside a
local window, and Masked Learnable Key Attention (MLKA) reads the input only from *outside* each
token's window, so the network cannot copy a token (or its anomaly) to its own output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refad.errors import ConfigError
from refad.models.base import FeatureSpec, ReconstructionModel, Scores
from refad.models.layers import (
    MultiHeadAttention,
    Noise,
    TokenEmbedding,
    feature_jitter,
    neighbourhood_mask,
    to_map,
    to_tokens,
    window_index_table,
    window_size_for,
    windowed_attention,
)
from refad.models.layers.halo_attention import (
    HaloTables,
    halo_block_for,
    halo_tables,
    halo_windowed_attention,
)
from refad.models.rlr.config import AttentionImpl, RLRConfig
from refad.models.scoring import gaussian_blur, max_score, mse_cosine_map, upsample_maps


def resolve_attention_impl(impl: AttentionImpl, device: torch.device | str | None) -> str:
    """The concrete attention path for a model built for `device` ("fast" picks per device).

    Decided once, when the model is built; moving a built model keeps its path (all paths
    give the same maps, only their speed differs by device).
    """
    if impl != "fast":
        return impl
    kind = torch.device(device).type if device is not None else "cpu"
    return "windowed" if kind == "cuda" else "halo"


class WindowMasks(NamedTuple):
    """The masks of one level, built with the level (never per call) and moved with it.

    `inside`: (N, N) bool, True where the key lies in the query's window (reference path).
    `index`/`valid`: (N, P) window gather table (windowed LCA). `outside_bias`: (N, N)
    additive float mask, -inf inside the window and 0 outside (MLKA on the fast paths);
    `inside_bias` the opposite (dense LCA); `halo` the block tables (halo LCA). None where the
    level's path does not use it.
    """

    inside: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    outside_bias: torch.Tensor | None
    inside_bias: torch.Tensor | None = None
    halo: HaloTables | None = None


class RLRLayer(nn.Module):
    """One RLR layer: Z = LN(alpha*LCA + MLKA) (no residual from Y); Y' = LN(Z + FFN(Z))."""

    def __init__(
        self, dim: int, num_heads: int, ffn_ratio: int, config: RLRConfig, impl: str
    ) -> None:
        super().__init__()
        self.kind = config.attention
        self.impl = impl
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
        if self.impl == "dense":
            return self.lca(y, ref, ref, masks.inside_bias)
        if self.impl == "halo":
            assert masks.halo is not None
            return halo_windowed_attention(self.lca, y, ref, ref, masks.halo)
        return windowed_attention(self.lca, y, ref, ref, masks.index, masks.valid)

    def masked_key(self, y: torch.Tensor, ref: torch.Tensor, masks: WindowMasks) -> torch.Tensor:
        """MLKA: keys from the reference, values from y, only from OUTSIDE each window."""
        if self.impl == "reference":
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


def _additive_mask(blocked: torch.Tensor) -> torch.Tensor:
    """0 where a key may be read, -inf where `blocked` (float32; autocast casts it with q)."""
    return torch.zeros(blocked.shape).masked_fill(blocked, float("-inf"))


class RLRLevel(nn.Module):
    """The reconstruction network of one feature level (H x W tokens of C channels)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        dim: int,
        window: int,
        config: RLRConfig,
        impl: str,
    ) -> None:
        super().__init__()
        self.height, self.width, self.window = height, width, window
        block = halo_block_for(height, width, window) if impl == "halo" else None
        if impl == "halo" and block is None:
            impl = "dense"  # a small map: dense attention is as cheap as its halo blocks
        self.impl = impl
        pos = config.position_embedding
        self.input_embed = TokenEmbedding(channels, dim, height, width, pos)
        self.reference = nn.Parameter(torch.randn(height * width, channels))
        self.reference_embed = TokenEmbedding(channels, dim, height, width, pos)
        self.layers = nn.ModuleList(
            RLRLayer(dim, config.num_heads, config.ffn_ratio, config, impl)
            for _ in range(config.num_layers)
        )
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, channels)
        # Shape-derived tables: non-persistent buffers (not in the state_dict), built here once
        # for the level's attention path; they follow the module's device and dtype moves.
        inside = neighbourhood_mask(height, width, window)
        self.register_buffer("window_mask", inside, persistent=False)
        index, valid = window_index_table(height, width, window)
        self.register_buffer("window_index", index, persistent=False)
        self.register_buffer("window_valid", valid, persistent=False)
        kind = config.attention
        outside = impl != "reference" and kind in ("rlr", "mlka")
        dense_lca = impl == "dense" and kind in ("rlr", "lca")
        self.register_buffer(
            "outside_bias", _additive_mask(inside) if outside else None, persistent=False
        )
        self.register_buffer(
            "inside_bias", _additive_mask(~inside) if dense_lca else None, persistent=False
        )
        halo = halo_tables(height, width, window, block) if block is not None else None
        self.halo_block = block
        self.register_buffer("halo_index", halo.index if halo else None, persistent=False)
        self.register_buffer("halo_bias", halo.bias if halo else None, persistent=False)

    def masks(self) -> WindowMasks:
        """The masks of this level's attention path."""
        halo = None
        if self.halo_block is not None:
            halo = HaloTables(
                self.halo_index, self.halo_bias, self.halo_block, self.height, self.width
            )
        return WindowMasks(
            self.window_mask, self.window_index, self.window_valid, self.outside_bias,
            self.inside_bias, halo,
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) input tokens -> (B, N, C) reconstruction."""
        y = self.input_embed(tokens)
        ref = self.reference_embed(self.reference.to(tokens.dtype))[None]  # once per forward
        masks = self.masks()
        for layer in self.layers:
            y = layer(y, ref, masks)
        return self.out_proj(self.out_norm(y))


class RLR(ReconstructionModel):
    """RLR over several feature levels, one independent `RLRLevel` each."""

    method = "rlr"

    def __init__(
        self,
        spec: FeatureSpec,
        config: RLRConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """`device`: where the model will run; it only decides the "fast" attention path (the
        parameters are created on the CPU, the caller moves them)."""
        config = config or RLRConfig()
        super().__init__(spec, config)
        self.attention_impl = resolve_attention_impl(config.attention_impl, device)
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
            self.levels.append(RLRLevel(c, h, w, d, window, config, self.attention_impl))

    def with_attention_impl(self, impl: AttentionImpl) -> RLR:
        """A copy with the same weights, device and mode, computing attention by `impl`.

        The fast and reference paths share every parameter, so this is how the fast path is
        checked against the plain masked one (tests, benchmarks).
        """
        config = self.config.model_copy(update={"attention_impl": impl})
        param = next(self.parameters())
        copy = RLR(self.spec, config, param.device)
        copy.to(device=param.device, dtype=param.dtype)
        copy.load_state_dict(self.state_dict())
        buffers = dict(copy.named_buffers())
        with torch.no_grad():  # non-persistent tables too (e.g. an imported positional table)
            for name, buf in self.named_buffers():
                if name in buffers and buffers[name].shape == buf.shape:
                    buffers[name].copy_(buf)
        return copy.train(self.training)

    def targets(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return levels

    def reconstruct(
        self, targets: list[torch.Tensor], generator: Noise = None
    ) -> list[torch.Tensor]:
        out = []
        for net, target in zip(self.levels, targets, strict=True):
            tokens = to_tokens(target)
            if self.training:
                tokens = feature_jitter(tokens, self.config.jitter_scale, generator=generator)
            out.append(to_map(net(tokens), net.height, net.width))
        return out

    def loss(
        self, levels: list[torch.Tensor], generator: Noise = None
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
