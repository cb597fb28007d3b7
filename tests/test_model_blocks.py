"""Shared blocks: masks, positional embedding, jitter, attention, scoring rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from refad.errors import ConfigError
from refad.models.layers import (
    MultiHeadAttention,
    feature_jitter,
    neighbourhood_mask,
    sine_position_embedding_2d,
    window_size_for,
)
from refad.models.scoring import avg_pool_max_score, gaussian_blur, l2_map, mse_cosine_map


def test_neighbourhood_mask_matches_brute_force() -> None:
    h, w, p = 5, 7, 3
    mask = neighbourhood_mask(h, w, p)
    for i in range(h * w):
        for j in range(h * w):
            yi, xi, yj, xj = i // w, i % w, j // w, j % w
            assert mask[i, j].item() == (abs(yi - yj) <= 1 and abs(xi - xj) <= 1)
    # clipped at borders: a corner token has a 2x2 neighbourhood, an interior one 3x3
    assert mask[0].sum() == 4 and mask[w + 1].sum() == 9


def test_neighbourhood_mask_rejects_even_window() -> None:
    with pytest.raises(ConfigError, match="odd"):
        neighbourhood_mask(4, 4, 4)


def test_window_sizes_follow_paper_table() -> None:
    assert [window_size_for(s) for s in (16, 32, 64)] == [5, 7, 11]
    assert window_size_for(8) % 2 == 1 and window_size_for(8) >= 3
    assert window_size_for(128) == 23


def test_sine_embedding_halves_encode_y_then_x() -> None:
    pe = sine_position_embedding_2d(4, 6, 16).view(4, 6, 16)
    # first half constant along x, second half constant along y
    assert torch.allclose(pe[:, :1, :8].expand(4, 6, 8), pe[:, :, :8])
    assert torch.allclose(pe[:1, :, 8:].expand(4, 6, 8), pe[:, :, 8:])
    assert not torch.allclose(pe[0, 0], pe[3, 5])
    assert pe.abs().max() <= 1.0


def test_feature_jitter_scale_and_determinism() -> None:
    tokens = torch.randn(2, 500, 64) * 3
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = feature_jitter(tokens, 4.0, generator=g1), feature_jitter(tokens, 4.0, generator=g2)
    assert torch.equal(a, b)
    noise_std = ((a - tokens) / (tokens.norm(dim=-1, keepdim=True) / 64)).std().item()
    assert noise_std == pytest.approx(4.0, rel=0.05)
    assert torch.equal(feature_jitter(tokens, 0.0), tokens)


def test_attention_mask_blocks_values_outside_window() -> None:
    torch.manual_seed(0)
    h = w = 6
    allowed = neighbourhood_mask(h, w, 3)
    attn = MultiHeadAttention(16, 4).eval()
    q, k, v = torch.randn(1, h * w, 16), torch.randn(1, h * w, 16), torch.randn(1, h * w, 16)
    base = attn(q, k, v, allowed)
    j = 14
    v2 = v.clone()
    v2[0, j] += 5.0
    moved = (attn(q, k, v2, allowed) - base).abs().amax(dim=-1)[0] > 1e-6
    # only queries whose window contains j may change
    assert torch.equal(moved, allowed[:, j])
    # the complementary (MLKA) mask: exactly the others
    base_c = attn(q, k, v, ~allowed)
    moved_c = (attn(q, k, v2, ~allowed) - base_c).abs().amax(dim=-1)[0] > 1e-6
    assert torch.equal(moved_c, ~allowed[:, j])


def test_gaussian_blur_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 40, 33)).astype(np.float64)
    ours = gaussian_blur(torch.from_numpy(maps), 4.0).numpy()
    ref = np.stack([gaussian_filter(m, sigma=4) for m in maps])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_score_rules_on_hand_made_maps() -> None:
    m = torch.zeros(1, 8, 8)
    m[0, 2, 3] = 16.0
    # 4x4 average pool: the single hot pixel is diluted by 16
    assert avg_pool_max_score(m, 4).item() == pytest.approx(1.0)
    rec = torch.zeros(1, 3, 2, 2)
    tgt = torch.zeros(1, 3, 2, 2)
    tgt[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    rec[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    rec[0, :, 1, 1] = torch.tensor([1.0, 0.0, 0.0])
    tgt[0, :, 1, 1] = torch.tensor([0.0, 1.0, 0.0])
    assert l2_map(rec, tgt)[0, 1, 1].item() == pytest.approx(2**0.5)
    assert l2_map(rec, tgt)[0, 0, 0].item() == 0
    # orthogonal: mse 2/3, 1 - cos = 1
    assert mse_cosine_map(rec, tgt)[0, 1, 1].item() == pytest.approx(2 / 3 + 1)
    assert mse_cosine_map(rec, tgt)[0, 0, 0].item() == pytest.approx(0, abs=1e-6)
