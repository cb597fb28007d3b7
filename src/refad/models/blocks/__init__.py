"""Building blocks shared by every reconstruction method (attention, masks, embeddings, jitter)."""

from refad.models.blocks.attention import MultiHeadAttention
from refad.models.blocks.embedding import TokenEmbedding, sine_position_embedding_2d
from refad.models.blocks.jitter import feature_jitter
from refad.models.blocks.masks import neighbourhood_mask, window_size_for

__all__ = [
    "MultiHeadAttention",
    "TokenEmbedding",
    "feature_jitter",
    "neighbourhood_mask",
    "sine_position_embedding_2d",
    "window_size_for",
]
