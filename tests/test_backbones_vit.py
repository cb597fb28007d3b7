"""ViT backbones (random weights: nothing is downloaded): block grids without prefix tokens,
patch-multiple sizes, position tables resampled per size as timm's dynamic size does."""

from __future__ import annotations

import pytest
import timm
import torch

from refad.backbones import VitBackbone, build_extractor
from refad.config import apply_overrides, preset
from refad.errors import ConfigError

VIT = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def vit() -> VitBackbone:
    fe = build_extractor({"name": VIT, "kind": "vit", "levels": [2, 5], "weights": None})
    assert isinstance(fe, VitBackbone)
    return fe


def test_two_blocks_give_patch_grids_with_their_strides_and_channels(vit: VitBackbone) -> None:
    assert vit.levels == (2, 5) and vit.channels == [384, 384] and vit.strides == [14, 14]
    out = vit(torch.randn(2, 3, 56, 112))
    assert [tuple(f.shape) for f in out] == [(2, 384, 4, 8)] * 2  # no CLS token in the grid
    assert vit.output_shapes((56, 112)) == [(4, 8), (4, 8)]
    assert vit.output_shapes(42) == [(3, 3), (3, 3)]
    assert len(vit.model.blocks) == 6  # blocks after the deepest chosen one are dropped
    assert not any(p.requires_grad for p in vit.parameters()) and not vit.training


def test_register_tokens_stay_out_of_the_grid() -> None:
    fe = build_extractor({"name": "vit_small_patch14_reg4_dinov2", "kind": "vit",
                          "levels": [0, 1], "weights": None, "aggregate_kernel": 1})
    assert fe.model.num_prefix_tokens == 5
    assert [tuple(f.shape) for f in fe(torch.randn(1, 3, 28, 70))] == [(1, 384, 2, 5)] * 2


def test_features_equal_timm_dynamic_size_at_any_size(vit: VitBackbone) -> None:
    """Resampling the table once per size gives timm's per-forward dynamic resample exactly,
    from the weights' own table each time (not from the last size's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = timm.create_model(VIT, pretrained=False, dynamic_img_size=True).eval()
    for hw in ((56, 112), (70, 28), (56, 112)):
        x = torch.randn(1, 3, *hw)
        want = ref.forward_intermediates(x, indices=[2, 5], intermediates_only=True)
        for got, exp in zip(vit.raw_levels(x), want, strict=True):
            assert torch.equal(got, exp)


def test_sizes_off_the_patch_grid_are_one_line_config_errors(vit: VitBackbone) -> None:
    with pytest.raises(ConfigError, match=r"data.image_size: \[56, 110\] is not a multiple of "
                       r"the 14-pixel patches .* \(nearest: \[56, 112\]\)"):
        vit.output_shapes((56, 110))
    with pytest.raises(ConfigError, match="data.image_size"):
        vit(torch.randn(1, 3, 50, 56))


def test_training_refuses_an_off_grid_size_before_any_features(demo_root, tmp_path) -> None:
    from conftest import tiny_config

    from refad.training import fit

    config = tiny_config(demo_root, f"backbone.name={VIT}", "backbone.kind=vit",
                         "backbone.levels=[0, 1]", "data.image_size=[56, 60]")
    with pytest.raises(ConfigError, match=r"data.image_size: \[56, 60\] is not a multiple"):
        fit(config, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("checkpoint*"))


def test_kind_and_block_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="backbone.levels: .* out of range for .*0..11"):
        build_extractor({"name": VIT, "kind": "vit", "levels": [2, 12], "weights": None})
    with pytest.raises(ConfigError, match="backbone.kind: tf_efficientnet_lite0 is not a timm"):
        build_extractor({"name": "tf_efficientnet_lite0", "kind": "vit", "weights": None})
    with pytest.raises(ConfigError, match=r"backbone.levels: \[5, 2\] must be non-negative and "
                       "ascending"):
        apply_overrides(preset("rlr"), ["backbone.kind=vit", "backbone.levels=[5, 2]"])
    cfg = apply_overrides(preset("patchcore"), ["backbone.kind=vit", "backbone.levels=[8, 11]"])
    assert cfg.backbone.levels == [8, 11]  # block indices beyond a CNN's 0..4
    with pytest.raises(ConfigError, match="model.hidden_dims: the default widths"):
        apply_overrides(preset("rlr"), ["backbone.kind=vit", "backbone.levels=[8, 11]"])
    cfg = apply_overrides(preset("rlr"), ["backbone.kind=vit", "backbone.levels=[8, 11]",
                                          "model.hidden_dims=[384, 384]"])
    assert cfg.model.hidden_dims == [384, 384]
    with pytest.raises(ConfigError, match=r"backbone.levels: \[8\] out of range"):
        apply_overrides(preset("rlr"), ["backbone.levels=[8]"])


def test_weights_file_loads_into_the_kept_blocks(tmp_path) -> None:
    """A full timm ViT state dict (head, final norm, late blocks included) loads strictly into
    the blocks that run."""
    import safetensors.torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        full = timm.create_model(VIT, pretrained=False)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    fe = build_extractor({"name": VIT, "kind": "vit", "levels": [0, 1], "weights": str(path)})
    assert torch.equal(fe.model.blocks[1].mlp.fc1.weight, full.blocks[1].mlp.fc1.weight)
    assert fe.weights_id != "random-seed-0"
