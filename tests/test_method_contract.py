"""The method contract, run over every registered method (as timm tests every model): a new
method that registers itself is checked here without a line of test code of its own.

Each method is built on a tiny feature spec, fitted its own way (a few optimiser steps, or its
one pass over normal features), scored (shapes, finiteness), saved and reloaded bit-identical
through a run folder's checkpoint, exported to ONNX with parity, and refuses a bad config
value with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL_MODELS
from PIL import Image

from refad.backbones import Backbone, FeatureExtractor, build_extractor
from refad.config import RunConfig
from refad.deploy import Inferencer
from refad.errors import ConfigError
from refad.export import export_model
from refad.models.base import AnomalyModel, FeatureSpec, OnePassModel, ReconstructionModel
from refad.models.registry import METHODS, build_model, method_config, model_class
from refad.runs.checkpoint import CheckpointMeta, load_model, save_checkpoint, spec_to_dict
from refad.training.loop import make_optimizer

SIZE = 64
CALIB = {"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0}


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)


def normal_images(n: int, seed: int, size: int | tuple[int, int] = SIZE) -> torch.Tensor:
    """Smooth random normalised images, (n, 3, H, W) (an integer size: square)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    hw = (size, size) if isinstance(size, int) else size
    return torch.nn.functional.interpolate(small, size=hw, mode="bicubic")


def fitted(method: str, extractor: Backbone, size: int | tuple[int, int] = SIZE
           ) -> AnomalyModel:
    """The method built for the extractor's levels and fitted its own way on normal images."""
    spec = FeatureSpec.of(extractor, size)
    torch.manual_seed(0)
    model = build_model(method, spec, SMALL_MODELS.get(method, {}))
    levels = extractor(normal_images(8, 0, size))
    if isinstance(model, OnePassModel):
        model.fit(([lvl[i : i + 4] for lvl in levels] for i in (0, 4)), seed=0)
    else:
        assert isinstance(model, ReconstructionModel) and model.fit_kind == "gradient"
        config = RunConfig.model_validate({"method": method})
        optimizer = make_optimizer(model, config)
        model.train()
        for _ in range(2):
            optimizer.zero_grad()
            loss = model.loss(levels)
            assert loss.ndim == 0 and torch.isfinite(loss)
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_and_model(request, extractor) -> tuple[str, AnomalyModel]:
    return request.param, fitted(request.param, extractor)


def test_registry_and_config_schema_know_the_same_methods() -> None:
    for method in METHODS:
        cls = model_class(method)
        assert cls.method == method and cls.fit_kind in ("gradient", "one_pass")
        assert RunConfig.model_validate({"method": method}).model.method == method


def test_scores_have_the_contract_shapes_and_are_finite(method_and_model, extractor) -> None:
    _, model = method_and_model
    with torch.inference_mode():
        scores = model.score(extractor(normal_images(3, 1)))
    assert scores.maps.shape == (3, SIZE, SIZE) and scores.image.shape == (3,)
    assert torch.isfinite(scores.maps).all() and torch.isfinite(scores.image).all()


def test_save_and_reload_is_bit_identical(method_and_model, extractor, tmp_path) -> None:
    method, model = method_and_model
    meta = CheckpointMeta(method=method, epoch=1, epochs=1, spec=spec_to_dict(model.spec),
                          backbone={}, model_config=model.config.model_dump())
    save_checkpoint(tmp_path, model, meta)
    loaded, _ = load_model(tmp_path, "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    levels = extractor(normal_images(2, 2))
    with torch.inference_mode():
        a, b = model.score(levels), loaded.score(levels)
    assert torch.equal(a.maps, b.maps) and torch.equal(a.image, b.image)


def test_export_parity(method_and_model, extractor, tmp_path) -> None:
    method, model = method_and_model
    rgb = [np.asarray(((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte())
           for img in normal_images(4, 3)]
    meta = export_model(extractor, {"unified": model}, {"unified": CALIB}, {"run": "contract"},
                        tmp_path / "exp", "onnx", "fp32", check_images=rgb[:2])
    parity = meta["units"]["unified"]["parity"]
    assert meta["method"] == method and parity["passed"], parity
    result = Inferencer(tmp_path / "exp").predict(rgb[3])
    assert np.isfinite(result.score) and result.anomaly_map.shape == (SIZE, SIZE)


def test_a_bad_config_value_is_one_line(method_and_model) -> None:
    method, _ = method_and_model
    with pytest.raises(ConfigError, match="model") as err:
        method_config(method, {"no_such_field": 1})
    assert "\n" not in str(err.value)


# The same contract on other grids: a ViT's patch grid (two blocks of a random-weight DINOv2
# ViT-S/14) and a non-square input (320 x 128 in shape, here 64 x 160 pixels) of a CNN.
GRIDS = {
    "vit": ({"name": "vit_small_patch14_dinov2", "kind": "vit", "levels": [1, 3],
             "weights": "none"}, (28, 56)),
    "nonsquare": ({"name": "tf_efficientnet_lite0", "levels": [2, 3], "weights": "none"},
                  (64, 160)),
}


@pytest.fixture(scope="module", params=sorted(GRIDS))
def grid_backbone(request) -> tuple[Backbone, tuple[int, int]]:
    cfg, size = GRIDS[request.param]
    return build_extractor(cfg), size


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_fits_scores_and_exports_on_other_grids(
    method, grid_backbone, tmp_path
) -> None:
    extractor, (height, width) = grid_backbone
    model = fitted(method, extractor, (height, width))
    assert model.spec.image_size == (height, width)
    assert model.spec.strides == tuple(extractor.strides)
    with torch.inference_mode():
        scores = model.score(extractor(normal_images(3, 1, (height, width))))
    assert scores.maps.shape == (3, height, width) and scores.image.shape == (3,)
    assert torch.isfinite(scores.maps).all() and torch.isfinite(scores.image).all()
    rgb = [np.asarray(((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte())
           for img in normal_images(3, 3, (height, width))]
    meta = export_model(extractor, {"unified": model}, {"unified": CALIB}, {"run": "grid"},
                        tmp_path / "exp", "onnx", "fp32", check_images=rgb[:2])
    parity = meta["units"]["unified"]["parity"]
    assert parity["passed"], parity
    assert meta["input"]["size"] == [height, width]
    picture = np.asarray(Image.fromarray(rgb[2]).resize((90, 40)))  # any picture size
    result = Inferencer(tmp_path / "exp").predict(picture)
    assert np.isfinite(result.score) and result.anomaly_map.shape == (40, 90)
