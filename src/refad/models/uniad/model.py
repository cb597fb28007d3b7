"""UniAD: A Unified Model for Multi-class Anomaly Detection (You et al., NeurIPS 2022).

All backbone levels are resized to one token grid and concatenated; a transformer reconstructs
them. Two devices keep the network from copying its input ("identical shortcut"):
- neighbour-masked attention: a token never attends to keys inside its own k x k window
  (itself included), in the encoder and in both decoder attentions;
- a layer-wise query decoder: each decoder layer starts from its OWN learned queries (not from
  the input), reads the encoder output and the previous decoder output through that mask.
Feature jitter on the input during training adds a denoising objective.
"""

from __future__ import annotations

import torch
from torch import nn

from refad.errors import ConfigError
from refad.models.base import Scores
from refad.models.grid import GridReconstructionModel
from refad.models.layers import (
    LearnedPositionEmbedding2d,
    MultiHeadAttention,
    Noise,
    PostNormEncoderLayer,
    feature_jitter,
    feed_forward,
    neighbourhood_mask,
    sine_position_embedding_2d,
    to_map,
    to_tokens,
)
from refad.models.scoring import avg_pool_max_score, l2_map, upsample_maps
from refad.models.uniad.config import UniADConfig


class QueryDecoderLayer(nn.Module):
    """One layer of the layer-wise query decoder.

    q = own learned queries; q <- LN(q + Attn(q + pos, memory + pos, memory));
    q <- LN(q + Attn(q + pos, prev + pos, prev)); q <- LN(q + FFN(q)). `prev` is the previous
    decoder layer's output (the encoder output for the first layer).
    """

    def __init__(
        self, num_tokens: int, dim: int, num_heads: int, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, dim))
        self.memory_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.previous_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(
        self,
        previous: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        memory_allowed: torch.Tensor | None,
        previous_allowed: torch.Tensor | None,
    ) -> torch.Tensor:
        q = self.queries.to(memory.dtype).expand(memory.shape[0], -1, -1)
        a = self.memory_attn(q + pos, memory + pos, memory, memory_allowed)
        q = self.norm1(q + self.dropout1(a))
        a = self.previous_attn(q + pos, previous + pos, previous, previous_allowed)
        q = self.norm2(q + self.dropout2(a))
        return self.norm3(q + self.dropout3(self.ffn(q)))


class UniADNetwork(nn.Module):
    """Tokens (B, N, C) -> reconstruction (B, N, C) on an H x W grid."""

    def __init__(self, channels: int, height: int, width: int, config: UniADConfig) -> None:
        super().__init__()
        d = config.hidden_dim
        if d % config.num_heads != 0:
            raise ConfigError(
                f"model.hidden_dim {d} must be divisible by model.num_heads {config.num_heads}"
            )
        if d % (4 if config.position_embedding == "sine" else 2) != 0:
            raise ConfigError(
                f"model.hidden_dim {d} must be divisible by 4 (sine) or 2 (learned positions)"
            )
        self.height, self.width = height, width
        self.input_proj = nn.Linear(channels, d)
        if config.position_embedding == "learned":
            self.pos_embed: nn.Module | None = LearnedPositionEmbedding2d(height, width, d)
        else:
            self.pos_embed = None
            self.register_buffer(
                "sine_pos", sine_position_embedding_2d(height, width, d), persistent=False
            )
        self.encoder = nn.ModuleList(
            PostNormEncoderLayer(d, config.num_heads, config.ffn_dim, config.dropout)
            for _ in range(config.num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(height * width, d, config.num_heads, config.ffn_dim, config.dropout)
            for _ in range(config.num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.output_proj = nn.Linear(d, channels)
        self._init_linear()
        allowed = ~neighbourhood_mask(height, width, config.neighbour_window)
        if not allowed.any(dim=1).all():
            raise ConfigError(
                f"model.neighbour_window {config.neighbour_window} hides every token of a "
                f"{height}x{width} grid from some token; use a smaller window"
            )
        self.register_buffer("allowed", allowed, persistent=False)
        self.use_mask = (
            config.mask_encoder, config.mask_decoder_memory, config.mask_decoder_previous
        )

    def _init_linear(self) -> None:
        """Xavier-uniform weights and zero biases for every linear layer (the authors' init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def positions(self) -> torch.Tensor:
        return self.pos_embed() if self.pos_embed is not None else self.sine_pos

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(tokens)
        pos = self.positions().to(x.dtype)
        enc, dec_mem, dec_prev = (self.allowed if on else None for on in self.use_mask)
        memory = x
        for layer in self.encoder:
            memory = layer(memory, pos, enc)
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, dec_mem, dec_prev)
        return self.output_proj(self.decoder_norm(out))


class UniAD(GridReconstructionModel):
    """UniAD over the concatenation of all levels on one grid (one network, one target)."""

    method = "uniad"

    config_class = UniADConfig
    network = UniADNetwork

    def reconstruct(
        self, targets: list[torch.Tensor], generator: Noise = None
    ) -> list[torch.Tensor]:
        (target,) = targets
        tokens = to_tokens(target)
        if self.training:
            tokens = feature_jitter(
                tokens, self.config.jitter_scale, self.config.jitter_prob, generator=generator
            )
        return [to_map(self.net(tokens), *self.grid)]

    def score_reconstruction(
        self, targets: list[torch.Tensor], recs: list[torch.Tensor]
    ) -> Scores:
        """L2 map upsampled to the input size; max of its average-pooled version."""
        (rec,) = recs
        maps = upsample_maps(l2_map(rec, targets[0]), self.spec.image_size, align_corners=True)
        return Scores(maps=maps, image=avg_pool_max_score(maps, self.config.image_pool))
