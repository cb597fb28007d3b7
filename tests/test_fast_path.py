"""Fast path: windowed attention == masked dense attention, fast RLR == reference RLR, cached
masks, and device-resident training / scoring == the plain engine (all on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_MODELS, rel_err
from safetensors.torch import load_file

import refad.models.layers.embedding as embedding_module
import refad.models.rlr.model as rlr_module
from refad.backbones import FeatureExtractor
from refad.config import RunConfig, apply_overrides
from refad.device import cpu_threads, set_cpu_threads
from refad.errors import ConfigError
from refad.inference import Scorer, score_levels
from refad.models.base import FeatureSpec
from refad.models.layers import (
    local_attention,
    neighbourhood_mask,
    window_index_table,
)
from refad.models.registry import build_model
from refad.models.rlr.config import RLRConfig
from refad.models.rlr.model import RLR
from refad.runs import RunDir
from refad.runs.checkpoint import read_meta
from refad.training import train_unit
from refad.training.loop import DeviceFeatures, compiled_loss
from refad.training.train import CalibrationSet


def levels_for(spec: FeatureSpec, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, h, w, generator=g).abs()
        for c, (h, w) in zip(spec.channels, spec.shapes, strict=True)
    ]


# ----------------------------------------------------------------- window table and attention
@pytest.mark.parametrize(
    ("height", "width", "window"), [(8, 8, 3), (5, 7, 3), (7, 9, 5), (1, 6, 3), (3, 4, 7)]
)
def test_window_table_equals_neighbourhood_mask(height: int, width: int, window: int) -> None:
    index, valid = window_index_table(height, width, window)
    n = height * width
    assert index.shape == valid.shape == (n, window * window)
    dense = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(index)
    dense[rows[valid], index[valid]] = True
    assert torch.equal(dense, neighbourhood_mask(height, width, window))
    # every valid slot names a distinct key: no double counting in the softmax
    assert all(index[i][valid[i]].unique().numel() == int(valid[i].sum()) for i in range(n))
    assert index.min() >= 0 and index.max() < n


def test_window_table_rejects_even_window() -> None:
    with pytest.raises(ConfigError, match="odd"):
        window_index_table(4, 4, 4)


def masked_sdpa(q, k, v, allowed):  # (B, N, h, dh) layout in and out
    b = q.shape[0]
    k = k.expand(b, -1, -1, -1) if k.shape[0] != b else k
    v = v.expand(b, -1, -1, -1) if v.shape[0] != b else v
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed
    )
    return out.transpose(1, 2)


def assert_matches_masked_dense(attend, height: int, width: int, window: int,
                                shared: bool) -> None:
    """`attend(q, k, v)` equals masked dense attention over the windows, outputs and gradients
    (1e-5); `shared`: keys and values of batch 1, as RLR's reference."""
    g = torch.Generator().manual_seed(0)
    n, b, h, dh = height * width, 3, 2, 8
    q = torch.randn(b, n, h, dh, generator=g, requires_grad=True)
    kb = 1 if shared else b
    k = torch.randn(kb, n, h, dh, generator=g, requires_grad=True)
    v = torch.randn(kb, n, h, dh, generator=g, requires_grad=True)
    fast = attend(q, k, v)
    ref = masked_sdpa(q, k, v, neighbourhood_mask(height, width, window))
    assert fast.shape == ref.shape == (b, n, h, dh)
    assert rel_err(fast, ref) < 1e-5
    weight = torch.randn(fast.shape, generator=g)
    grads_fast = torch.autograd.grad((fast * weight).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for gf, gr in zip(grads_fast, grads_ref, strict=True):
        assert rel_err(gf, gr) < 1e-5


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(("height", "width", "window"), [(6, 5, 3), (4, 4, 5)])
def test_local_attention_matches_masked_dense(height, width, window, shared) -> None:
    index, valid = window_index_table(height, width, window)
    assert_matches_masked_dense(lambda q, k, v: local_attention(q, k, v, index, valid),
                                height, width, window, shared)


# ------------------------------------------------------------------- fast RLR == reference RLR
SPECS = {
    "square": FeatureSpec((2, 3), (12, 20), ((8, 8), (4, 4)), 32),
    "odd": FeatureSpec((2, 3), (10, 14), ((7, 9), (3, 5)), 36),
}


def model_pair(spec: FeatureSpec, **kw) -> tuple[RLR, RLR]:
    torch.manual_seed(0)
    config = RLRConfig(**SMALL_MODELS["rlr"], **kw)
    fast = RLR(spec, config)
    return fast, fast.with_attention_impl("reference")


@pytest.mark.parametrize("impl", ["fast", "windowed"])
@pytest.mark.parametrize("kind", ["rlr", "lca", "mlka"])
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_fast_maps_match_reference(spec_name: str, kind: str, impl: str) -> None:
    spec = SPECS[spec_name]
    # window 5 on a 7x9 map and 3 on 3x5: every query's window is clipped somewhere
    windows = {9: 5, 8: 5, 5: 3, 4: 3}
    fast, ref = model_pair(spec, attention=kind, windows=windows, attention_impl=impl)
    assert fast.config.attention_impl == impl and ref.config.attention_impl == "reference"
    feats = levels_for(spec, batch=3)
    a, b = fast.eval().score(feats), ref.eval().score(feats)
    assert a.maps.shape == (3, *spec.image_size)
    assert rel_err(a.maps, b.maps) < 1e-5
    assert rel_err(a.image, b.image) < 1e-5


@pytest.mark.parametrize("impl", ["fast", "windowed"])
def test_fast_gradients_match_reference(impl: str) -> None:
    spec = SPECS["odd"]
    fast, ref = model_pair(spec, windows={9: 5, 5: 3}, attention_impl=impl)
    feats = levels_for(spec, batch=2)
    loss_f = fast.train().loss(feats, torch.Generator().manual_seed(5))
    loss_r = ref.train().loss(feats, torch.Generator().manual_seed(5))
    assert abs(loss_f.item() - loss_r.item()) <= 1e-5 * abs(loss_r.item())
    loss_f.backward()
    loss_r.backward()
    grads_r = {name: p.grad for name, p in ref.named_parameters()}
    grads_f = {name: p.grad for name, p in fast.named_parameters()}
    flat_r = torch.cat([g.flatten() for g in grads_r.values()])
    flat_f = torch.cat([grads_f[name].flatten() for name in grads_r])
    assert rel_err(flat_f, flat_r) < 1e-5
    # per parameter, relative to its own size; key biases have a zero true gradient (softmax
    # ignores a shift shared by all keys), so an absolute floor from the whole gradient applies
    floor = 1e-6 * flat_r.norm()
    for name, gr in grads_r.items():
        assert (grads_f[name] - gr).norm() <= 1e-4 * gr.norm() + floor, name


def test_fast_lca_is_halo_off_cuda_and_windowed_on_request() -> None:
    """"fast" picks per device when the model is built: for the CPU, halo blocks, which on maps
    this small fall back to a dense SDPA with an additive mask (faster there than thousands of
    tiny window matmuls); for CUDA, the window gather; "windowed" gathers the windows anywhere."""
    spec = SPECS["square"]
    cfg = RLRConfig(**SMALL_MODELS["rlr"])
    fast = RLR(spec, cfg)
    assert fast.attention_impl == "halo"
    assert fast.levels[0].impl == "dense" and fast.levels[0].masks().halo is None
    assert RLR(spec, cfg, torch.device("cuda")).attention_impl == "windowed"  # built, not moved
    masks = fast.levels[0].masks()
    windowed = RLR(spec, RLRConfig(**SMALL_MODELS["rlr"], attention_impl="windowed"))
    assert windowed.attention_impl == "windowed"
    win_masks = windowed.levels[0].masks()
    assert masks.inside_bias is not None and masks.outside_bias is not None
    assert win_masks.inside_bias is None and win_masks.outside_bias is not None
    assert all(layer.impl == "dense" for layer in fast.levels[0].layers)


def test_state_dict_is_the_same_for_both_paths() -> None:
    fast, ref = model_pair(SPECS["square"])
    sd_f, sd_r = fast.state_dict(), ref.state_dict()
    assert sd_f.keys() == sd_r.keys()
    assert all(torch.equal(sd_f[k], sd_r[k]) for k in sd_f)
    assert not any("window" in k or "bias_cache" in k for k in sd_f)  # tables are not weights


def test_bf16_autocast_stays_close_to_float32_reference() -> None:
    spec = SPECS["square"]
    fast, ref = model_pair(spec)
    fast.eval()
    feats = levels_for(spec, batch=2)
    with torch.inference_mode():
        expected = ref.eval().score(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recs = fast.reconstruct(feats)
        assert recs[0].dtype == torch.bfloat16  # autocast really ran the model in bf16
        got = fast.score_reconstruction(feats, [r.float() for r in recs])
    assert 0 < rel_err(got.maps, expected.maps) < 1e-2


# ---------------------------------------------------------------------------- cached tables
def test_masks_and_positions_are_built_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"mask": 0, "table": 0, "pos": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(rlr_module, "neighbourhood_mask", counting("mask", neighbourhood_mask))
    monkeypatch.setattr(rlr_module, "window_index_table", counting("table", window_index_table))
    monkeypatch.setattr(
        embedding_module, "position_table", counting("pos", embedding_module.position_table)
    )
    spec = SPECS["square"]
    model = RLR(spec, RLRConfig(**SMALL_MODELS["rlr"])).eval()
    built = dict(counts)
    assert built == {"mask": 2, "table": 2, "pos": 4}  # per level: one mask, one table, 2 pos
    net = model.levels[0]
    outside, inside = net.outside_bias, net.inside_bias
    with torch.inference_mode():
        model.score(levels_for(spec, batch=2))
        model.score(levels_for(spec, batch=5))
        model.reconstruct(levels_for(spec, batch=1))
    assert counts == built  # nothing rebuilt by any forward, whatever the batch
    assert net.masks().outside_bias is outside and net.masks().inside_bias is inside
    assert torch.equal(torch.isinf(outside), net.window_mask)  # -inf exactly inside the window
    assert torch.equal(torch.isinf(inside), ~net.window_mask)
    model.to(torch.float64)  # the masks are buffers: they follow a dtype move
    assert net.outside_bias.dtype == torch.float64 and net.inside_bias.dtype == torch.float64
    assert torch.equal(torch.isinf(net.outside_bias), net.window_mask)


# --------------------------------------------------------------- engine: training and scoring
def tiny_run_config(epochs: int = 2) -> RunConfig:
    return RunConfig.model_validate(
        {
            "device": "cpu",
            "data": {"image_size": 32},
            "backbone": {"name": "tf_efficientnet_lite2", "weights": "none"},
            "train": {"epochs": epochs, "batch_size": 3, "seed": 11},
            "model": {"num_layers": 1, "hidden_dims": [16, 32], "num_heads": 4},
        }
    )


def train_tiny(tmp_path: Path, config: RunConfig) -> dict[str, torch.Tensor]:
    extractor = FeatureExtractor("tf_efficientnet_lite2", levels=(2, 3), weights=None)
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(7, 48, 4, 4, generator=g), torch.randn(7, 120, 2, 2, generator=g)]
    train_unit(
        "unified", levels, CalibrationSet(levels, ["x"] * 7, "train-normal"), config,
        extractor, RunDir(tmp_path),
        torch.device("cpu"), resume=False, progress=False,
    )
    assert [h["epoch"] for h in read_meta(tmp_path).history] == [1, 2]
    return load_file(str(RunDir(tmp_path).weights_path()))


def test_amp_switch_keeps_cpu_training_float32(tmp_path: Path) -> None:
    """`train.amp` is bf16 autocast on CUDA only: on the CPU the steps are bit-identical."""
    base = tiny_run_config()
    plain = train_tiny(tmp_path / "plain", base)
    amp = base.model_copy(update={"train": base.train.model_copy(update={"amp": True})})
    got = train_tiny(tmp_path / "amp", amp)
    assert plain.keys() == got.keys()
    assert all(torch.equal(plain[k], got[k]) for k in plain)
    half = base.model_copy(
        update={"train": base.train.model_copy(update={"feature_storage": "float16"})}
    )
    rounded = train_tiny(tmp_path / "half", half)  # fp16 storage rounds the cached features
    assert not all(torch.equal(plain[k], rounded[k]) for k in plain)
    assert all(torch.allclose(plain[k], rounded[k], atol=1e-2) for k in plain)


def test_compiled_training_matches_eager_on_cpu(tmp_path: Path) -> None:
    """`train.compile` changes how the loss runs, not what it computes: same noise stream
    (the generator draws stay eager), same weights to float tolerance after two epochs."""
    base = tiny_run_config()
    eager = train_tiny(tmp_path / "eager", base)
    compiled_cfg = base.model_copy(
        update={"train": base.train.model_copy(update={"compile": "default"})}
    )
    compiled = train_tiny(tmp_path / "compiled", compiled_cfg)
    assert eager.keys() == compiled.keys()
    # Softmax ignores a bias shared by every key, so a key bias's true gradient is 0 and what
    # autograd returns is rounding noise, which Adam scales to full steps: compare the rest.
    shaping = [k for k in eager if not k.endswith("k_proj.bias")]
    assert max(rel_err(compiled[k], eager[k]) for k in shaping) < 1e-4
    losses = {name: [h["loss"] for h in read_meta(tmp_path / name).history]
              for name in ("eager", "compiled")}
    assert losses["eager"][1] < losses["eager"][0]  # the steps did train
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    with pytest.raises(ConfigError, match="train.compile"):
        apply_overrides(RunConfig(), ["train.compile=fastest"])


def test_compiled_loss_leaves_the_masks_untouched() -> None:
    """The masks are buffers built with the model, never tensors made inside a compiled graph
    (CUDA-graph replay reuses the memory of a graph's tensors, which once overwrote a cached
    mask on an H100): a compiled loss reads them, leaves them as they were, and equals eager."""
    spec = SPECS["square"]
    model = RLR(spec, RLRConfig(**SMALL_MODELS["rlr"])).train()
    feats = levels_for(spec, batch=2)
    before = [net.outside_bias.clone() for net in model.levels]
    loss_fn = compiled_loss(model, "default")
    loss = loss_fn(feats, generator=torch.Generator().manual_seed(0))
    again = loss_fn(feats, generator=torch.Generator().manual_seed(0))
    after = [net.outside_bias for net in model.levels]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    eager = model.loss(feats, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(eager.item(), rel=1e-5)
    assert again.item() == pytest.approx(eager.item(), rel=1e-5)


def test_device_features_16_bit_storage_returns_float32() -> None:
    x = torch.randn(5, 3, 2, 2)
    feats = DeviceFeatures([x], torch.device("cpu"), torch.float16)
    assert feats.nbytes == x.numel() * 2 and len(feats) == 5
    batch = feats.batch(torch.tensor([4, 1]))[0]
    assert batch.dtype == torch.float32
    assert torch.equal(batch, x[[4, 1]].half().float())
    with pytest.raises(ConfigError, match="feature_storage"):
        apply_overrides(RunConfig(), ["train.feature_storage=int8"])


def test_fast_scorer_equals_model_score_on_cpu() -> None:
    spec = SPECS["odd"]
    model, _ = model_pair(spec)
    feats = levels_for(spec, batch=5)
    scorer = Scorer(model, torch.device("cpu"))
    with torch.inference_mode():
        expected = model.eval().score(feats)
    parts = list(scorer.score_cached(feats, batch_size=2))
    assert [p.image.shape[0] for p in parts] == [2, 2, 1]
    maps = torch.cat([p.maps for p in parts])
    assert rel_err(maps, expected.maps) < 1e-6
    assert torch.allclose(torch.cat([p.image for p in parts]), expected.image, rtol=1e-6)


def test_fast_scorer_scores_images_through_the_extractor() -> None:
    extractor = FeatureExtractor("tf_efficientnet_lite2", levels=(2, 3), weights=None)
    spec = FeatureSpec((2, 3), tuple(extractor.channels), tuple(extractor.output_shapes(32)), 32)
    model, _ = model_pair(spec)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    scorer = Scorer(model, torch.device("cpu"), extractor=extractor)
    got = scorer.images(images)
    with torch.inference_mode():
        expected = model.eval().score(extractor(images))
    assert rel_err(got.maps, expected.maps) < 1e-6
    with pytest.raises(ConfigError, match="extractor"):
        Scorer(model, torch.device("cpu")).images(images)


def test_amp_scoring_is_float32_on_cpu() -> None:
    """`--amp` asks for bf16 on CUDA only; on the CPU scoring is the plain float32 path."""
    spec = SPECS["odd"]
    model, _ = model_pair(spec)
    feats = levels_for(spec, batch=2)
    with torch.inference_mode():
        expected = model.eval().score(feats)
        got = score_levels(model, feats, amp=True)
    assert torch.equal(got.maps, expected.maps) and torch.equal(got.image, expected.image)


def test_cpu_threads_follow_affinity_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert set_cpu_threads() == cpu_threads()
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_cpu_threads() == 1  # the user's choice is kept
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["uniad", "crad"])
def test_every_method_scores_a_bf16_reconstruction_in_float32(method: str) -> None:
    """The split score (reconstruct, then the method's score rules) holds for every method,
    so `--amp` reaches UniAD and CRAD too, not only RLR."""
    spec = FeatureSpec((2, 3), (6, 10), ((8, 8), (4, 4)), 64)
    torch.manual_seed(0)
    model = build_model(method, spec, SMALL_MODELS[method]).eval()
    feats = levels_for(spec, batch=2)
    with torch.inference_mode():
        expected = model.score(feats)
        targets = model.targets(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recs = model.reconstruct(targets)  # CRAD's refinement mixes in the fp32 target
        got = model.score_reconstruction(targets, [r.float() for r in recs])
    assert got.maps.dtype == torch.float32
    assert 0 < rel_err(got.maps, expected.maps) < 5e-2  # > 0: the network really ran in bf16
