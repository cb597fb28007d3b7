"""CRAD model: targets, grid reads, coordinate noise, refinement, scoring, optimiser groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter, zoom

from refad.config import apply_overrides
from refad.config.presets import preset
from refad.errors import ConfigError
from refad.models.base import FeatureSpec
from refad.models.crad.config import CRADConfig
from refad.models.crad.model import CRAD, refine
from refad.models.layers import MobileBottleneck
from refad.models.registry import build_model
from refad.runs.checkpoint import CheckpointMeta, load_model, save_checkpoint, spec_to_dict
from refad.training.loop import make_optimizer

# two levels at strides 8 and 16 of a 64 px input -> 8x8 tokens of 6 + 10 channels
SPEC = FeatureSpec(levels=(2, 3), channels=(6, 10), shapes=((8, 8), (4, 4)), image_size=64)


def small(**kw) -> CRADConfig:
    base = dict(num_blocks=2, expansion=24)
    base.update(kw)
    return CRADConfig(**base)


def features(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in
            zip(SPEC.channels, SPEC.shapes, strict=True)]


def test_targets_upsample_the_coarse_level_and_concatenate() -> None:
    model = CRAD(SPEC, small())
    feats = features()
    (target,) = model.targets(feats)
    assert target.shape == (2, 16, 8, 8)
    assert torch.equal(target[:, :6], feats[0])
    up = F.interpolate(feats[1], size=(8, 8), mode="bilinear", align_corners=True)
    assert torch.allclose(target[:, 6:], up)


def test_shapes_scores_and_loss_reach_grids_and_network() -> None:
    model = CRAD(SPEC, small())
    feats = features()
    loss = model.loss(feats, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    net = model.net
    for p in (net.local_grid, net.global_grid, net.local_coords[0].weight,
              net.global_coords[0].weight, net.recover.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert net.global_grid.shape == (1, 16 * 8 * 8, 4, 4)
    assert net.local_grid.shape == (1, 16, 8, 8)
    model.eval()
    scores = model.score(feats)
    assert scores.maps.shape == (2, 64, 64) and scores.image.shape == (2,)
    assert torch.all(scores.maps >= 0)


def _cell_centre(index: int, size: int) -> float:
    """grid_sample coordinate (align_corners=False) of the centre of cell `index`."""
    return (2 * index + 1) / size - 1


def test_memory_reads_are_bilinear_grid_samples() -> None:
    # at a cell centre a read returns exactly that cell: x picks the column, y the row; the
    # global read returns a whole (C, H, W) map stored in one cell
    model = CRAD(SPEC, small())
    net = model.net
    local = torch.empty(1, 8, 8, 2)
    local[..., 0] = _cell_centre(5, 8)  # x -> column 5
    local[..., 1] = _cell_centre(2, 8)  # y -> row 2
    glob = torch.tensor([[_cell_centre(3, 4), _cell_centre(1, 4)]])
    with torch.no_grad():
        read = net.read_memory(local, glob)
    assert read.shape == (1, 32, 8, 8)
    assert torch.allclose(read[0, :16], net.global_grid[0, :, 1, 3].view(16, 8, 8), atol=1e-6)
    assert torch.allclose(read[0, 16:, 4, 4], net.local_grid[0, :, 2, 5], atol=1e-6)
    # halfway between two columns: the mean of the two cells
    local[..., 0] = (_cell_centre(5, 8) + _cell_centre(6, 8)) / 2
    with torch.no_grad():
        read = net.read_memory(local, glob)
    cells = net.local_grid[0, :, 2, 5:7].mean(dim=1)
    assert torch.allclose(read[0, 16:, 0, 0], cells, atol=1e-6)


def test_input_reaches_memory_only_through_coordinates() -> None:
    # swapping two tokens keeps the global average (so the global read) and only swaps the two
    # local reads: no other token sees them, and nothing copies feature values through
    model = CRAD(SPEC, small()).eval()
    (x,) = model.targets(features(batch=1))
    y = x.clone()
    y[:, :, 1, 2], y[:, :, 6, 5] = x[:, :, 6, 5], x[:, :, 1, 2]
    with torch.no_grad():
        a = model.net.read_memory(*model.net.coordinates(x))
        b = model.net.read_memory(*model.net.coordinates(y))
    assert torch.allclose(a[:, :16], b[:, :16], atol=1e-6)
    changed = (a[:, 16:] - b[:, 16:]).abs().amax(dim=1)[0] > 1e-7
    assert changed.nonzero().tolist() == [[1, 2], [6, 5]]
    assert torch.allclose(a[:, 16:, 1, 2], b[:, 16:, 6, 5], atol=1e-6)


def test_coordinate_noise_is_drawn_per_step_from_the_generator() -> None:
    model = CRAD(SPEC, small()).train()
    (x,) = model.targets(features())
    draws = [model._noise(x, torch.Generator().manual_seed(s)) for s in range(200)]
    noisy = [d for d in draws if d is not None]
    assert 70 <= len(noisy) <= 130  # probability 0.5 per step
    assert noisy[0].shape == (2, 2, 8, 8)
    std = torch.cat([d.flatten() for d in noisy]).std().item()
    assert std == pytest.approx(0.0598, rel=0.05)
    # same generator state -> same noise; eval and noise_prob 0 -> never
    seed = next(s for s, d in enumerate(draws) if d is not None)
    again = model._noise(x, torch.Generator().manual_seed(seed))
    assert torch.equal(again, draws[seed])
    assert model.eval()._noise(x, torch.Generator().manual_seed(seed)) is None
    quiet = CRAD(SPEC, small(noise_prob=0.0)).train()
    assert all(quiet._noise(x, torch.Generator().manual_seed(s)) is None for s in range(20))


def test_noise_moves_the_reconstruction_only_on_noisy_steps() -> None:
    model = CRAD(SPEC, small()).train()
    (x,) = model.targets(features())
    seeds = {s: model._noise(x, torch.Generator().manual_seed(s)) is not None for s in range(20)}
    clean = [s for s, n in seeds.items() if not n][:2]
    noisy = [s for s, n in seeds.items() if n][:1]
    out = {s: model.raw_reconstruction(x, torch.Generator().manual_seed(s)) for s in clean + noisy}
    assert torch.equal(out[clean[0]], out[clean[1]])
    assert not torch.allclose(out[clean[0]], out[noisy[0]])


def test_refinement_on_hand_made_tokens() -> None:
    cfg = CRADConfig()
    target = torch.ones(1, 4, 1, 2)
    rec = torch.empty(1, 4, 1, 2)
    rec[0, :, 0, 0] = 2.0  # mse 1 -> 0.05 rounds to 0 -> m = 1; cosine 1 -> sim = 1
    rec[0, :, 0, 1] = -5.0  # mse 36 -> clipped to 1 -> m = 0; cosine -1 -> sim = -0.7
    out = refine(rec, target, cfg)
    assert torch.allclose(out[0, :, 0, 0], torch.ones(4))
    assert torch.allclose(out[0, :, 0, 1], torch.full((4,), -0.7 * 1 + 1.7 * -5.0))
    half = torch.full((1, 4, 1, 1), 1.0 + 20 ** 0.5)  # mse 20 -> 1.0 -> m = 0; cosine 1
    assert torch.allclose(refine(half, torch.ones(1, 4, 1, 1), cfg),
                          0.7 * torch.ones(1, 4, 1, 1) + 0.3 * half)


def test_score_rules_on_a_hand_made_error() -> None:
    # network replaced by target + error: map = L2 of the error, upsampled with aligned
    # corners, then a 21x21 mean filter whose zero padding counts; image = max of its 32x32
    # moving average
    model = CRAD(SPEC, small()).eval()
    feats = features(batch=1)
    err = torch.zeros(1, 16, 8, 8)
    err[0, 0, 2, 5], err[0, 1, 2, 5] = 3.0, 4.0
    err[0, 9, 7, 0] = 2.0
    model.reconstruct = lambda targets, generator=None: [targets[0] + err]
    scores = model.score(feats)
    small_map = np.zeros((8, 8))
    small_map[2, 5], small_map[7, 0] = 5.0, 2.0
    up = zoom(small_map, 8, order=1, grid_mode=False)
    expected = uniform_filter(up, size=21, mode="constant", cval=0.0)
    assert np.allclose(scores.maps[0].numpy(), expected, atol=1e-5)
    image = sliding_window_view(expected, (32, 32)).mean(axis=(-1, -2)).max()
    assert scores.image.item() == pytest.approx(image, rel=1e-5)


def test_parameter_groups_put_the_grids_at_their_own_rate() -> None:
    model = CRAD(SPEC, small(grid_lr=0.5))
    net_group, grid_group = model.parameter_groups(1e-3)
    assert net_group["lr"] == 1e-3 and grid_group["lr"] == 0.5
    assert {id(p) for p in grid_group["params"]} == {id(model.net.local_grid),
                                                      id(model.net.global_grid)}
    every = {id(p) for p in model.parameters()}
    ids = [id(p) for p in net_group["params"] + grid_group["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == every
    optimizer = make_optimizer(model, preset("crad"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.5]
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)


def test_bottleneck_is_residual_with_squeeze_excite() -> None:
    block = MobileBottleneck(8, 16).eval()
    x = torch.randn(2, 8, 5, 5)
    torch.nn.init.zeros_(block.project_norm.weight)
    assert torch.equal(block(x), x)  # last BN zeroed: only the residual remains
    assert block.depthwise.groups == 16 and block.se.reduce.weight.shape == (4, 16)


def test_checkpoint_round_trip_keeps_batch_norm_statistics(tmp_path: Path) -> None:
    model = CRAD(SPEC, small())
    model.loss(features(), torch.Generator().manual_seed(0)).backward()  # BN stats move
    assert model.net.fusion[0].expand_norm.num_batches_tracked.item() == 1
    meta = CheckpointMeta(method="crad", epoch=1, epochs=1, spec=spec_to_dict(SPEC),
                          backbone={}, model_config=model.config.model_dump())
    save_checkpoint(tmp_path, model, meta)
    loaded, _ = load_model(tmp_path, torch.device("cpu"))
    assert isinstance(loaded, CRAD) and loaded.config == model.config
    feats = features(seed=3)
    a, b = model.eval().score(feats), loaded.score(feats)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.image, b.image)


def test_registry_and_presets() -> None:
    assert isinstance(build_model("crad", SPEC, small().model_dump()), CRAD)
    with pytest.raises(ConfigError, match="smooth_kernel"):
        build_model("crad", SPEC, {"smooth_kernel": 20})
    with pytest.raises(ConfigError, match="noise_prob"):
        build_model("crad", SPEC, {"noise_prob": 2})
    crad, crad_s = preset("crad"), preset("crad-s")
    for cfg in (crad, crad_s):
        assert cfg.method == "crad" and cfg.data.image_size == 224
        assert cfg.backbone.name == "tf_efficientnet_b4" and cfg.backbone.levels == [2, 3]
        assert cfg.backbone.aggregate_kernel == 1
        t = cfg.train
        assert (t.optimizer, t.lr, t.epochs, t.lr_step_epoch, t.grad_clip, t.batch_size) == (
            "adamw", 1e-3, 50, 40, 0.1, 64)
    assert crad.model.expansion == 864 and crad_s.model.expansion == 216
    assert CRADConfig.parse(crad.model).grid_lr == 0.1
    lite = apply_overrides(crad_s, ["backbone.name=tf_efficientnet_lite2", "model.num_blocks=3"])
    assert lite.model == CRADConfig(expansion=216, num_blocks=3)
    # the paper's geometry: 56 + 160 = 216 channels on 28x28 tokens, 432-wide fusion
    b4 = FeatureSpec((2, 3), (56, 160), ((28, 28), (14, 14)), 224)
    model = CRAD(b4, CRADConfig(num_blocks=1, expansion=216))
    assert model.net.global_grid.shape == (1, 216 * 28 * 28, 4, 4)
    assert model.net.fusion[0].expand.weight.shape == (216, 432, 1, 1)
    assert model.net.recover.weight.shape == (216, 432, 1, 1)


def test_noise_of_a_batch_shard_is_its_rows_of_the_whole_batch_draw() -> None:
    from refad.training.noise import BatchShard

    model = CRAD(SPEC, small()).train()
    (x,) = model.targets(features(batch=4))
    seed = next(
        s for s in range(50) if model._noise(x, torch.Generator().manual_seed(s)) is not None
    )
    whole = model._noise(x, torch.Generator().manual_seed(seed))
    shard = model._noise(x[2:], BatchShard(torch.Generator().manual_seed(seed), 2, 4))
    assert torch.equal(shard, whole[2:])
