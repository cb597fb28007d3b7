"""RLR model: structure, ablation switches, the missing identity path, scoring."""

from __future__ import annotations

import pytest
import torch

from refad.errors import ConfigError
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.models.rlr.config import RLRConfig
from refad.models.rlr.model import RLR

SPEC = FeatureSpec(levels=(2, 3), channels=(12, 20), shapes=((8, 8), (4, 4)), image_size=32)


def small(**kw) -> RLRConfig:
    return RLRConfig(num_layers=2, hidden_dims=[32, 64], **kw)


def features(batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, c, h, w, generator=g)
        for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)
    ]


def test_default_widths_follow_level_index() -> None:
    spec = FeatureSpec((1, 2, 3), (32, 40, 72), ((64, 64), (32, 32), (16, 16)), 256)
    model = RLR(spec, RLRConfig(num_layers=1))
    widths = [lvl.out_proj.in_features for lvl in model.levels]
    assert widths == [128, 256, 512]
    assert [lvl.window for lvl in model.levels] == [11, 7, 5]
    shapes = [tuple(lvl.reference.shape) for lvl in model.levels]
    assert shapes == [(4096, 32), (1024, 40), (256, 72)]


def test_reconstruction_shapes_and_scores() -> None:
    model = RLR(SPEC, small()).eval()
    feats = features()
    recs = model.reconstruct(feats)
    assert [r.shape for r in recs] == [f.shape for f in feats]
    scores = model.score(feats)
    assert scores.maps.shape == (2, 32, 32) and scores.image.shape == (2,)
    assert torch.all(scores.maps >= 0)


def test_eval_is_deterministic_and_train_draws_jitter() -> None:
    model = RLR(SPEC, small())
    feats = features()
    model.eval()
    assert torch.equal(model.reconstruct(feats)[0], model.reconstruct(feats)[0])
    model.train()
    a = model.reconstruct(feats, torch.Generator().manual_seed(1))[0]
    b = model.reconstruct(feats, torch.Generator().manual_seed(2))[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind", ["rlr", "lca", "mlka", "cross", "self"])
def test_every_ablation_trains(kind: str) -> None:
    model = RLR(SPEC, small(attention=kind))
    loss = model.loss(features(), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def output_change_at(model: RLR, token: int) -> torch.Tensor:
    """How much each output token of level 0 moves when input `token` is replaced."""
    net = model.levels[0]
    x = torch.randn(1, 64, 12, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0, token] = torch.randn(12, generator=torch.Generator().manual_seed(4)) * 10
    return (net(x2) - net(x)).abs().amax(dim=-1)[0]


def test_lca_only_output_depends_on_input_only_through_the_query() -> None:
    # LCA reads values from the reference, so with one layer changing input token t can only
    # change output t (its own query); a residual path would change it too, but so does the
    # query - the difference is that no OTHER token sees t.
    model = RLR(SPEC, RLRConfig(num_layers=1, hidden_dims=[32, 64], attention="lca")).eval()
    moved = output_change_at(model, 27) > 1e-6
    assert moved.nonzero().flatten().tolist() == [27]


def test_mlka_never_reads_values_inside_window() -> None:
    # one MLKA layer: changing input t moves output t (query) and tokens OUTSIDE t's window
    # (which read t's value); tokens inside t's window (other than t) must not move.
    model = RLR(SPEC, RLRConfig(num_layers=1, hidden_dims=[32, 64], attention="mlka")).eval()
    t = 27
    moved = output_change_at(model, t) > 1e-6
    window = model.levels[0].window_mask[t].clone()
    window[t] = False
    assert not moved[window].any()
    assert moved[~model.levels[0].window_mask[t]].all()


def test_reference_is_embedded_once_per_forward() -> None:
    model = RLR(SPEC, small()).eval()
    calls = []
    model.levels[0].reference_embed.register_forward_hook(lambda *a: calls.append(a[2].shape))
    model.reconstruct(features(batch=5))
    assert calls == [torch.Size([64, 32])]  # one embedding without batch dim, broadcast later


def test_registry_validates_model_section() -> None:
    with pytest.raises(ConfigError, match="attention"):
        build_model("rlr", SPEC, {"attention": "bogus"})
    with pytest.raises(ConfigError, match="alpha"):
        build_model("rlr", SPEC, {"alpha": -1})
    with pytest.raises(ConfigError, match="unknown method"):
        build_model("nope", SPEC, {})
    with pytest.raises(ConfigError, match="hidden_dims"):
        build_model("rlr", SPEC, {"hidden_dims": [32]})
