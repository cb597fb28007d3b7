"""Halo-block window attention == masked dense attention, and RLR on it == reference RLR."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_MODELS, rel_err
from test_fast_path import assert_matches_masked_dense, levels_for

from refad.errors import ConfigError
from refad.models.base import FeatureSpec
from refad.models.layers import neighbourhood_mask
from refad.models.layers.halo_attention import halo_attention, halo_block_for, halo_tables
from refad.models.rlr.config import RLRConfig
from refad.models.rlr.model import RLR


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(
    ("height", "width", "window", "block"),
    [(32, 32, 7, 8), (16, 24, 7, 8), (8, 8, 3, 4), (8, 12, 5, 4), (6, 4, 3, 2), (4, 4, 9, 2)],
)
def test_halo_attention_matches_masked_dense(height, width, window, block, shared) -> None:
    tables = halo_tables(height, width, window, block)
    assert tables.index.shape == ((height // block) * (width // block), (block + window - 1) ** 2)
    assert_matches_masked_dense(lambda q, k, v: halo_attention(q, k, v, tables),
                                height, width, window, shared)


def test_halo_mask_keeps_exactly_each_window() -> None:
    """Scattered back to (N, N), the allowed (block, query, halo key) slots are the window mask."""
    height, width, window, block = 8, 12, 5, 4
    tables = halo_tables(height, width, window, block)
    n = height * width
    dense = torch.zeros(n, n, dtype=torch.bool)
    per_row = width // block
    for blk in range(tables.index.shape[0]):
        oy, ox = (blk // per_row) * block, (blk % per_row) * block
        for slot in range(block * block):
            query = (oy + slot // block) * width + ox + slot % block
            keys = tables.index[blk][torch.isfinite(tables.bias[blk, slot])]
            assert keys.unique().numel() == keys.numel()  # no key counted twice
            dense[query, keys] = True
    assert torch.equal(dense, neighbourhood_mask(height, width, window))


def test_halo_tables_reject_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="odd"):
        halo_tables(8, 8, 4, 4)
    with pytest.raises(ConfigError, match="divide"):
        halo_tables(8, 10, 3, 4)


def test_halo_blocks_only_where_they_save_work() -> None:
    assert halo_block_for(32, 32, 7) == 8  # RLR's 32 x 32 level: 196 keys, not 1024
    assert halo_block_for(64, 64, 11) == 8
    assert halo_block_for(16, 16, 5) is None  # 144 halo keys of 256: dense is as cheap
    assert halo_block_for(20, 20, 5) is None  # 8 does not divide the map


SPEC = FeatureSpec((2, 3), (12, 20), ((16, 16), (8, 8)), 64)


def test_rlr_on_halo_blocks_matches_reference() -> None:
    torch.manual_seed(0)
    config = RLRConfig(**SMALL_MODELS["rlr"], windows={16: 3, 8: 3}, attention_impl="halo")
    halo = RLR(SPEC, config)
    ref = halo.with_attention_impl("reference")
    assert halo.levels[0].impl == "halo" and halo.levels[0].masks().halo is not None
    assert halo.levels[1].impl == "dense"  # 8 x 8: falls back where blocks save nothing
    assert all(layer.impl == "halo" for layer in halo.levels[0].layers)
    feats = levels_for(SPEC, batch=3)
    a, b = halo.eval().score(feats), ref.eval().score(feats)
    assert rel_err(a.maps, b.maps) < 1e-5
    assert rel_err(a.image, b.image) < 1e-5
    loss_h = halo.train().loss(feats, torch.Generator().manual_seed(5))
    loss_r = ref.train().loss(feats, torch.Generator().manual_seed(5))
    assert abs(loss_h.item() - loss_r.item()) <= 1e-5 * abs(loss_r.item())
    assert not any("halo" in name for name in halo.state_dict())  # tables are not weights
