"""Layers shared by every reconstruction method (attention, masks, embeddings, jitter)."""

from refad.models.layers.attention import MultiHeadAttention
from refad.models.layers.embedding import TokenEmbedding, sine_position_embedding_2d
from refad.models.layers.features import concat_on_grid, grid_index, to_map, to_tokens
from refad.models.layers.jitter import (
    Noise,
    NoiseSource,
    draw_normal,
    draw_uniform,
    feature_jitter,
)
from refad.models.layers.local_attention import (
    local_attention,
    window_index_table,
    windowed_attention,
)
from refad.models.layers.masks import neighbourhood_mask, window_size_for
from refad.models.layers.mobilenet import MobileBottleneck, SqueezeExcite
from refad.models.layers.positions import (
    LearnedPositionEmbedding2d,
    integer_sine_position_embedding_2d,
)
from refad.models.layers.transformer import PostNormEncoderLayer, feed_forward

__all__ = [
    "Noise",
    "NoiseSource",
    "draw_normal",
    "draw_uniform",
    "LearnedPositionEmbedding2d",
    "MobileBottleneck",
    "MultiHeadAttention",
    "PostNormEncoderLayer",
    "SqueezeExcite",
    "TokenEmbedding",
    "concat_on_grid",
    "feature_jitter",
    "feed_forward",
    "grid_index",
    "integer_sine_position_embedding_2d",
    "local_attention",
    "neighbourhood_mask",
    "sine_position_embedding_2d",
    "to_map",
    "to_tokens",
    "window_index_table",
    "window_size_for",
    "windowed_attention",
]
