"""UniAD model: targets, neighbour masks (by perturbation), jitter, scoring, checkpoints, preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import zoom

from refad.config import apply_overrides
from refad.config.presets import preset
from refad.errors import ConfigError
from refad.models.base import FeatureSpec
from refad.models.layers import PostNormEncoderLayer, neighbourhood_mask
from refad.models.registry import build_model
from refad.models.uniad.config import UniADConfig
from refad.models.uniad.model import UniAD
from refad.runs.checkpoint import CheckpointMeta, load_model, save_checkpoint, spec_to_dict

# three levels at strides 4, 8, 16 of a 128 px input: an 8x8 token grid
SPEC = FeatureSpec(levels=(1, 2, 3), channels=(6, 8, 10), shapes=((32, 32), (16, 16), (8, 8)),
                   image_size=128)
WINDOW = 7


def small(**kw) -> UniADConfig:
    base = dict(hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2,
                ffn_dim=64)
    base.update(kw)
    return UniADConfig(**base)


def features(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in
            zip(SPEC.channels, SPEC.shapes, strict=True)]


def test_targets_resize_every_level_to_the_grid_and_concatenate() -> None:
    model = UniAD(SPEC, small())
    feats = features()
    (target,) = model.targets(feats)
    assert target.shape == (2, 24, 8, 8)
    # the grid level passes unchanged; others are bilinear with aligned corners (the authors'
    # nn.UpsamplingBilinear2d): corners of the resized map equal the source corners
    assert torch.equal(target[:, 14:], feats[2])
    assert torch.allclose(target[:, :6, 0, 0], feats[0][:, :, 0, 0], atol=1e-4)
    assert torch.allclose(target[:, :6, -1, -1], feats[0][:, :, -1, -1], atol=1e-4)
    expected = F.interpolate(feats[1], size=(8, 8), mode="bilinear", align_corners=True)
    assert torch.allclose(target[:, 6:14], expected)


def test_grid_level_picks_another_grid() -> None:
    model = UniAD(SPEC, small(grid_level=1))
    assert model.targets(features())[0].shape == (2, 24, 16, 16)
    with pytest.raises(ConfigError, match="grid_level"):
        UniAD(SPEC, small(grid_level=3))


def test_shapes_scores_and_loss() -> None:
    model = UniAD(SPEC, small())
    feats = features()
    loss = model.loss(feats, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.ndim == 0
    assert model.net.decoder[0].queries.grad.abs().sum() > 0
    model.eval()
    (rec,) = model.reconstruct(model.targets(feats))
    assert rec.shape == (2, 24, 8, 8)
    scores = model.score(feats)
    assert scores.maps.shape == (2, 128, 128) and scores.image.shape == (2,)
    assert torch.all(scores.maps >= 0)


def _moved(net, tokens: torch.Tensor, t: int) -> torch.Tensor:
    """Which output tokens change when input token t is replaced (eval mode, no jitter)."""
    other = tokens.clone()
    other[0, t] = torch.randn(tokens.shape[-1], generator=torch.Generator().manual_seed(9)) * 5
    with torch.no_grad():
        return (net(other) - net(tokens)).abs().amax(dim=-1)[0] > 1e-6


@pytest.mark.parametrize("t", [0, 27, 63])
def test_reconstruction_never_reads_its_own_neighbourhood(t: int) -> None:
    # Decoder only: the queries are learned, so output i depends on the input solely through
    # attention to tokens OUTSIDE i's 7x7 window. Replacing token t must leave every output in
    # t's window (t included) unchanged and move every output outside it.
    model = UniAD(SPEC, small(num_encoder_layers=0, num_decoder_layers=1)).eval()
    tokens = torch.randn(1, 64, 24, generator=torch.Generator().manual_seed(1))
    moved = _moved(model.net, tokens, t)
    window = neighbourhood_mask(8, 8, WINDOW)[t]
    assert not moved[window].any()
    assert moved[~window].all()


def test_without_masks_a_token_reaches_its_own_output() -> None:
    # the same probe detects the identity path once the masks are switched off
    cfg = small(num_encoder_layers=0, num_decoder_layers=1, mask_decoder_memory=False,
                mask_decoder_previous=False)
    model = UniAD(SPEC, cfg).eval()
    tokens = torch.randn(1, 64, 24, generator=torch.Generator().manual_seed(1))
    assert _moved(model.net, tokens, 27).all()


def test_encoder_layer_blocks_the_window_but_keeps_its_residual() -> None:
    # one masked encoder layer: token t reaches its own output only through the residual, and
    # no other token of its window; every token outside the window reads it
    torch.manual_seed(0)
    layer = PostNormEncoderLayer(16, 4, 32, dropout=0.0).eval()
    allowed = ~neighbourhood_mask(8, 8, WINDOW)
    pos = torch.randn(64, 16)
    x = torch.randn(1, 64, 16)
    t = 36
    moved = _moved(lambda y: layer(y, pos, allowed), x, t)
    window = ~allowed[t]
    window[t] = False
    assert moved[t]
    assert not moved[window].any()
    assert moved[allowed[t]].all()


def test_window_that_hides_everything_is_rejected() -> None:
    spec = FeatureSpec((2, 3), (4, 4), ((8, 8), (4, 4)), 64)
    with pytest.raises(ConfigError, match="neighbour_window"):
        UniAD(spec, small())
    UniAD(spec, small(neighbour_window=3))  # a 3x3 window leaves keys on a 4x4 grid


def test_jitter_only_in_training_and_reproducible() -> None:
    model = UniAD(SPEC, small(dropout=0.0))
    target = model.targets(features())
    model.eval()
    clean = model.reconstruct(target)[0]
    assert torch.equal(clean, model.reconstruct(target)[0])
    model.train()
    a = model.reconstruct(target, torch.Generator().manual_seed(1))[0]
    b = model.reconstruct(target, torch.Generator().manual_seed(1))[0]
    c = model.reconstruct(target, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, clean)
    quiet = UniAD(SPEC, small(dropout=0.0, jitter_scale=0.0))
    quiet.load_state_dict(model.state_dict())
    assert torch.allclose(quiet.train().reconstruct(target)[0], clean, atol=1e-6)


def test_learned_positions_concatenate_column_then_row() -> None:
    model = UniAD(SPEC, small())
    pe = model.net.pos_embed
    table = pe().view(8, 8, 32)
    assert torch.equal(table[2, 5, :16], pe.cols[5]) and torch.equal(table[2, 5, 16:], pe.rows[2])
    sine = UniAD(SPEC, small(position_embedding="sine"))
    assert not any("pos" in k for k in sine.state_dict())  # fixed table, not a weight


def test_score_rules_on_a_hand_made_error() -> None:
    # replace the network's output by target + a hand-made error: the map must be the L2 norm
    # of that error, bilinearly upsampled with aligned corners, and the image score the max of
    # its 16x16 moving average
    model = UniAD(SPEC, small()).eval()
    feats = features(batch=1)
    err = torch.zeros(1, 24, 8, 8)
    err[0, 0, 2, 5], err[0, 1, 2, 5] = 3.0, 4.0  # norm 5 at (2, 5)
    err[0, 7, 6, 1] = -2.0
    model.reconstruct = lambda targets, generator=None: [targets[0] + err]
    scores = model.score(feats)
    small_map = np.zeros((8, 8))
    small_map[2, 5], small_map[6, 1] = 5.0, 2.0
    expected = zoom(small_map, 16, order=1, grid_mode=False)  # corners to corners
    assert expected.shape == (128, 128)
    assert np.allclose(scores.maps[0].numpy(), expected, atol=1e-5)
    image = sliding_window_view(expected, (16, 16)).mean(axis=(-1, -2)).max()
    assert scores.image.item() == pytest.approx(image, rel=1e-5)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = UniAD(SPEC, small(position_embedding="learned"))
    model.loss(features(), torch.Generator().manual_seed(0)).backward()
    meta = CheckpointMeta(method="uniad", epoch=1, epochs=1, spec=spec_to_dict(SPEC),
                          backbone={}, model_config=model.config.model_dump())
    save_checkpoint(tmp_path, model, meta)
    loaded, _ = load_model(tmp_path, torch.device("cpu"))
    assert isinstance(loaded, UniAD) and loaded.config == model.config
    feats = features()
    a, b = model.eval().score(feats), loaded.score(feats)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.image, b.image)


def test_registry_validates_the_model_section() -> None:
    assert isinstance(build_model("uniad", SPEC, small().model_dump()), UniAD)
    with pytest.raises(ConfigError, match="neighbour_window"):
        build_model("uniad", SPEC, {"neighbour_window": 6})
    with pytest.raises(ConfigError, match="bogus"):
        build_model("uniad", SPEC, {"bogus": 1})
    with pytest.raises(ConfigError, match="num_heads"):
        build_model("uniad", SPEC, {"hidden_dim": 30, "num_heads": 8})


def test_preset_is_the_released_configuration() -> None:
    cfg = preset("uniad")
    assert cfg.method == "uniad" and cfg.data.image_size == 224
    assert cfg.backbone.name == "tf_efficientnet_b4"
    assert cfg.backbone.levels == [0, 1, 2, 3] and cfg.backbone.aggregate_kernel == 1
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, t.epochs, t.lr_step_epoch, t.lr_gamma) == (
        "adamw", 1e-4, 1e-4, 1000, 800, 0.1)
    assert (t.batch_size, t.grad_clip) == (8, 0.1)
    lite = apply_overrides(cfg, ["backbone.name=tf_efficientnet_lite2", "train.epochs=5"])
    assert lite.backbone.name == "tf_efficientnet_lite2" and lite.train.epochs == 5
    assert lite.backbone.levels == [0, 1, 2, 3]
    # the paper's geometry: 24+32+56+160 = 272 channels on 14x14 tokens
    b4 = FeatureSpec((0, 1, 2, 3), (24, 32, 56, 160),
                     ((112, 112), (56, 56), (28, 28), (14, 14)), 224)
    model = UniAD(b4, UniADConfig(num_encoder_layers=1, num_decoder_layers=1))
    assert model.net.input_proj.weight.shape == (256, 272)
    assert model.net.decoder[0].queries.shape == (196, 256)
    assert model.net.encoder[0].ffn[0].weight.shape == (1024, 256)


def test_the_same_weights_give_the_same_checkpoint_file(tmp_path: Path) -> None:
    """safetensors writes its metadata in hash-map order, so identical weights got another
    sha256 and file name in most saves: a resumed run and a fresh one looked like different
    models (metrics.json records the model's sha256)."""
    model = UniAD(SPEC, small(position_embedding="learned"))
    optimizer = torch.optim.Adam(model.parameters())
    model.loss(features(), torch.Generator().manual_seed(0)).backward()
    optimizer.step()
    manifests = []
    for i in range(12):
        meta = CheckpointMeta(method="uniad", epoch=1, epochs=1, spec=spec_to_dict(SPEC),
                              backbone={}, model_config=model.config.model_dump())
        save_checkpoint(tmp_path / str(i), model, meta, optimizer)
        manifests.append({kind: entry["sha256"] for kind, entry in meta.files.items()})
    assert all(m == manifests[0] for m in manifests), manifests
    loaded, meta = load_model(tmp_path / "11", torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
