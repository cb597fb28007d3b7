"""Post-norm transformer pieces with positions added to queries and keys only (DETR style).

UniAD's encoder is a stack of these layers; its decoder layers reuse `feed_forward`. Values
never carry the positional embedding, so a value is exactly the token content.
"""

from __future__ import annotations

import torch
from torch import nn

from refad.models.layers.attention import MultiHeadAttention


def feed_forward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear (indices 0 and 3 hold the weights)."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
    )


class PostNormEncoderLayer(nn.Module):
    """x <- LN(x + Drop(Attn(x + pos, x + pos, x, allowed))); x <- LN(x + Drop(FFN(x)))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(2))

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, N, d) tokens, (N, d) positions, (N, N) bool mask or None -> (B, N, d)."""
        qk = x + pos
        x = self.norm1(x + self.dropout1(self.attn(qk, qk, x, allowed)))
        return self.norm2(x + self.dropout2(self.ffn(x)))
