"""Multi-head attention with separate query, key and value sources and a boolean mask.

RLR needs attention where keys come from the learnable reference while values come either from
the reference (LCA) or from the input (MLKA); UniAD needs neighbour-masked self/cross attention.
One module covers all of them: the caller passes q, k and v sources and a mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over (B, N, d) queries and (B or 1, M, d) keys/values.

    `allowed` is a boolean (N, M) matrix, True where a query may attend to a key. Keys/values
    with batch 1 broadcast over the query batch, so an input-independent reference is embedded
    and projected once per forward, not once per sample.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as torch.nn.MultiheadAttention does (what the authors' code uses).

        Its packed (3d, d) input projection is xavier-uniform over fan_in + fan_out = 4d, so
        each of q/k/v gets bound sqrt(6 / 4d); input biases and the output bias start at zero,
        the output weight keeps nn.Linear's default.
        """
        dim = self.q_proj.in_features
        bound = (6.0 / (4 * dim)) ** 0.5
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)

    def project_tokens(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projected and split into heads, token-major: (B, N, heads, head_dim) each
        (the layout the window attentions read without transposes)."""

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], self.num_heads, -1)

        return split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = query.shape
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        if k.shape[0] != b:
            k = k.expand(b, -1, -1, -1)
        if v.shape[0] != b:
            v = v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))
