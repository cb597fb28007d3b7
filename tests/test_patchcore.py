"""PatchCore: the streaming coreset, exact nearest-neighbour scores, and its run folders (one
pass, no optimiser file, resume, a bank that is truncated, edited or from another run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

from refad.cli.main import app
from refad.config import apply_overrides
from refad.config.presets import preset
from refad.errors import CheckpointError
from refad.models.base import FeatureSpec, load_state_checked
from refad.models.patchcore import PatchCore
from refad.models.patchcore.config import PatchCoreConfig
from refad.models.patchcore.coreset import StreamingCoreset, greedy_k_center
from refad.runs import checkpoint as ckpt
from refad.runs.layout import META_FILE

SPEC = FeatureSpec(levels=(2, 3), channels=(6, 10), shapes=((8, 8), (4, 4)), image_size=32)


def clusters(n_per: int, centres: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([c + 0.01 * torch.randn(n_per, centres.shape[1], generator=g)
                      for c in centres])


def test_greedy_k_center_takes_one_point_of_every_cluster() -> None:
    centres = torch.eye(5) * 10
    points = clusters(40, centres, 0)
    picked = greedy_k_center(points, 5, seed=3)
    assert sorted((picked // 40).tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(picked, greedy_k_center(points, 5, seed=3))  # seeded


def test_streaming_coreset_keeps_rare_patterns_and_its_ratio() -> None:
    common = clusters(500, torch.zeros(1, 16), 1)
    rare = clusters(3, torch.full((1, 16), 5.0), 2)
    coreset = StreamingCoreset(ratio=0.02, dim=16, projection_dim=8, oversample=4, seed=0)
    for chunk in (common[:250], torch.cat([common[250:], rare])):
        coreset.add(chunk)
    bank, labels = coreset.select()
    assert labels.shape == (bank.shape[0],) and not labels.any()
    assert bank.shape == (round(0.02 * 503), 16)
    assert (bank - 5.0).abs().amax(dim=1).lt(1).any()  # the rare pattern is covered


def fitted_model(**config) -> PatchCore:
    model = PatchCore(SPEC, PatchCoreConfig(**config))
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(6, 6, 8, 8, generator=g), torch.randn(6, 10, 4, 4, generator=g)]
    model.fit(([lvl[i : i + 3] for lvl in levels] for i in (0, 3)), seed=0)
    return model.eval()


def test_scores_are_exact_nearest_neighbour_distances_whatever_the_chunk() -> None:
    model = fitted_model(coreset_ratio=0.5, gaussian_sigma=0)
    g = torch.Generator().manual_seed(1)
    levels = [torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 10, 4, 4, generator=g)]
    queries = model.embed(levels).reshape(2, -1, model.embed_dim)
    expected = torch.cdist(queries, model.bank[None]).amin(dim=2)
    dist, _ = model.nearest(queries)
    torch.testing.assert_close(dist, expected, rtol=1e-5, atol=1e-5)
    small = PatchCore(SPEC, model.config.model_copy(update={"query_chunk": 7}))
    load_state_checked(small, model.state_dict(), "bank")
    assert torch.equal(small.score(levels).maps, model.score(levels).maps)
    # a patch of the bank itself scores zero
    assert model.nearest(model.bank[None, :3])[0].abs().max() < 1e-3


def test_reweighted_image_score_is_at_most_the_largest_patch_distance() -> None:
    model = fitted_model(coreset_ratio=0.3, image_score="reweighted")
    g = torch.Generator().manual_seed(2)
    levels = [torch.randn(3, 6, 8, 8, generator=g), torch.randn(3, 10, 4, 4, generator=g)]
    scores = model.score(levels)
    dist, _ = model.nearest(model.embed(levels).reshape(3, -1, model.embed_dim))
    largest = dist.view(3, -1).amax(dim=1)
    assert (scores.image > 0).all() and (scores.image <= largest + 1e-6).all()


def two_products(n: int, seed: int) -> list[torch.Tensor]:
    """Levels of n pictures of product 0 (around 0) then n of product 1 (around 3)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randn(n, c, h, w, generator=g),
                       3.0 + torch.randn(n, c, h, w, generator=g)])
            for c, (h, w) in zip(SPEC.channels, SPEC.shapes, strict=True)]


def test_routing_keeps_each_picture_to_its_own_products_rows() -> None:
    """A defect that looks like the other product's normal patches is far from every row of
    its own product: routed, it scores high; unrouted, it finds the look-alike."""
    levels = two_products(4, seed=0)
    groups = torch.tensor([0] * 4 + [1] * 4)
    routed = PatchCore(SPEC, PatchCoreConfig(coreset_ratio=0.5, gaussian_sigma=0, route=True))
    plain = PatchCore(SPEC, PatchCoreConfig(coreset_ratio=0.5, gaussian_sigma=0))
    for model in (routed, plain):
        model.fit(([lvl[i : i + 3] for lvl in levels] for i in range(0, 8, 3)), seed=0,
                  groups=groups)
        model.eval()
    assert routed.bank_group.shape == (routed.bank.shape[0],)
    assert set(routed.bank_group.tolist()) == {0, 1} and routed.routes.shape[0] == 8
    test = [lvl[[0, 1]].clone() for lvl in two_products(1, seed=1)]
    for lvl in test:  # a patch of product 0 that looks like product 1
        lvl[0, :, :1, :1] += 3.0
    feats = routed.embed(test)
    assert routed.route(feats).tolist() == [0, 1]
    dist, idx = routed.nearest(feats.reshape(2, -1, routed.embed_dim), routed.route(feats))
    assert (routed.bank_group[idx[0]] == 0).all() and (routed.bank_group[idx[1]] == 1).all()
    r, p = routed.score(test), plain.score(test)
    assert r.maps[0, 0, 0] > 2 * p.maps[0, 0, 0]  # routed: the look-alike is out of reach
    torch.testing.assert_close(r.maps[1], p.maps[1])  # product 1's own rows are its nearest


def test_a_routed_bank_reloads_and_its_tables_are_checked() -> None:
    levels = two_products(3, seed=2)
    model = PatchCore(SPEC, PatchCoreConfig(coreset_ratio=0.5, route=True))
    model.fit([levels], seed=0, groups=torch.tensor([0, 0, 0, 1, 1, 1]))
    state = model.state_dict()
    assert {"bank", "bank_group", "routes", "route_group"} <= set(state)
    again = PatchCore(SPEC, PatchCoreConfig(coreset_ratio=0.5, route=True))
    load_state_checked(again, state, "bank")
    test = two_products(1, seed=3)
    assert torch.equal(again.eval().score(test).maps, model.eval().score(test).maps)
    bad = {**state, "bank_group": state["bank_group"][:-1]}
    with pytest.raises(CheckpointError, match="routing tables"):
        load_state_checked(PatchCore(SPEC, PatchCoreConfig(route=True)), bad, "bank")
    assert "bank_group" not in PatchCore(SPEC, PatchCoreConfig()).state_dict()


def test_channel_pooling_averages_to_embed_dim() -> None:
    model = fitted_model(embed_dim=4)
    assert model.bank.shape[1] == 4
    levels = [torch.ones(1, 6, 8, 8), torch.ones(1, 10, 4, 4)]
    torch.testing.assert_close(model.embed(levels), torch.ones(1, 8, 8, 4))


def patchcore_config(root: Path, *extra: str):
    """PatchCore on a random-init Lite2 at 64 px; `extra` settings replace the defaults."""
    settings = dict(item.split("=", 1) for item in [
        f"data.root={root}", "data.image_size=64", "backbone.name=tf_efficientnet_lite2",
        "backbone.weights=none", "backbone.levels=[2, 3]", "device=cpu",
        "train.val_fraction=0.34", "model.coreset_ratio=0.1", "model.embed_dim=null",
        f"train.seed={tiny_config(root).train.seed}", *extra])
    return apply_overrides(preset("patchcore"), [f"{k}={v}" for k, v in settings.items()])


@pytest.fixture(scope="module")
def patchcore_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refad.training import fit

    run = tmp_path_factory.mktemp("runs") / "patchcore"
    fit(patchcore_config(demo_root), run, progress=False)
    return run


def test_a_fitted_run_has_one_epoch_a_bank_and_no_optimiser(patchcore_run: Path) -> None:
    meta = json.loads((patchcore_run / META_FILE).read_text())
    assert (meta["epoch"], meta["epochs"], meta["history"]) == (1, 1, [])
    assert set(meta["files"]) == {"model"} and meta["calibration"]["threshold"] > 0
    assert meta["calibration"]["source"] == "validation-normal"
    model, _ = ckpt.load_model(patchcore_run, "cpu")
    assert model.bank.shape[0] >= 1 and model.bank.shape[1] == sum(meta["spec"]["channels"])


def test_resume_of_a_fitted_run_keeps_it(patchcore_run: Path, demo_root: Path,
                                          tmp_path: Path) -> None:
    from refad.training import fit

    copy = tmp_path / "copy"
    shutil.copytree(patchcore_run, copy)
    before = (copy / META_FILE).read_text()
    fit(patchcore_config(demo_root), copy, resume=True, progress=False)
    assert (copy / META_FILE).read_text() == before


def test_same_seed_same_bank(demo_root: Path, patchcore_run: Path, tmp_path: Path) -> None:
    from refad.training import fit

    fit(patchcore_config(demo_root), tmp_path / "again", progress=False)
    a = json.loads((patchcore_run / META_FILE).read_text())["files"]["model"]["sha256"]
    b = json.loads((tmp_path / "again" / META_FILE).read_text())["files"]["model"]["sha256"]
    assert a == b


@pytest.mark.parametrize("damage", ["truncated", "edited", "other_run"])
def test_a_damaged_or_foreign_bank_is_one_line_and_exit_2(
    patchcore_run: Path, demo_root: Path, tmp_path: Path, damage: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(patchcore_run, copy)
    meta = json.loads((copy / META_FILE).read_text())
    bank_file = copy / meta["files"]["model"]["name"]
    data = bank_file.read_bytes()
    if damage == "truncated":
        bank_file.write_bytes(data[: len(data) // 2])
    elif damage == "edited":
        bank_file.write_bytes(data[:-8] + b"\x7f" * 8)
    else:  # another run's bank file put in place of this one's
        from refad.training import fit

        other = tmp_path / "other"
        fit(patchcore_config(demo_root, "model.coreset_ratio=0.2"), other, progress=False)
        other_meta = json.loads((other / META_FILE).read_text())
        bank_file.write_bytes((other / other_meta["files"]["model"]["name"]).read_bytes())
    with pytest.raises(CheckpointError) as err:
        ckpt.load_model(copy, "cpu")
    assert "\n" not in str(err.value) and bank_file.name in str(err.value)
    result = CliRunner().invoke(app, ["test", "--run", str(copy), "--no-report"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error:")


def test_another_runs_whole_checkpoint_is_refused_naming_the_field(
    patchcore_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    from refad.training import fit

    other = tmp_path / "other"
    fit(patchcore_config(demo_root, "model.coreset_ratio=0.2"), other, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(patchcore_run, copy)
    for path in copy.glob("model-*.safetensors"):
        path.unlink()
    for path in other.glob("model-*.safetensors"):
        shutil.copy(path, copy / path.name)
    shutil.copy(other / META_FILE, copy / META_FILE)
    result = CliRunner().invoke(app, ["test", "--run", str(copy), "--no-report"])
    assert result.exit_code == 2 and "model.coreset_ratio" in result.output, result.output


def test_compare_takes_settings_for_one_method(demo_root: Path, tmp_path: Path) -> None:
    """`--set` reaches every method; a field only PatchCore has was refused for RLR, so
    `--set patchcore:model.embed_dim=null` reaches that method alone."""
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--methods", "rlr,patchcore", "--root", str(demo_root), "--backbone",
        "tf_efficientnet_lite2", "--weights", "none", "--epochs", "1", "--out", str(out),
        "--device", "cpu", "--set", "data.image_size=64", "--set",
        "patchcore:model.embed_dim=null", "--set", "rlr:model.num_layers=1",
        "--set", "rlr:model.hidden_dims=[32, 64]", "--set", "rlr:model.num_heads=4",
        "--no-progress"])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "comparison.json").read_text())
    assert set(table["methods"]) == {"rlr", "patchcore"}
    assert json.loads((out / "patchcore" / "config.json").read_text())["model"]["embed_dim"] is None
    assert json.loads((out / "rlr" / "config.json").read_text())["model"]["num_layers"] == 1


def test_a_routed_unified_model_exports_with_parity(tmp_path: Path) -> None:
    """Routing lives in the graph: the exported model picks the same product and the same
    rows as PyTorch for pictures of either product."""
    import numpy as np

    from refad.backbones.cnn import FeatureExtractor
    from refad.deploy import Inferencer
    from refad.export import export_model

    extractor = FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)
    g = torch.Generator().manual_seed(0)
    small = torch.rand(12, 3, 8, 8, generator=g) * 2 - 1
    small[6:] = -small[6:].flip(1)  # product 1: other colours
    images = torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic")
    model = PatchCore(FeatureSpec.of(extractor, 64), PatchCoreConfig(coreset_ratio=0.2,
                                                                     route=True))
    train = [0, 1, 2, 3, 6, 7, 8, 9]
    with torch.no_grad():
        model.fit([extractor(images[train])], seed=0,
                  groups=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    model.eval()
    rgb = [np.asarray(((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte())
           for img in images]
    calib = {"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0}
    meta = export_model(extractor, {"unified": model}, {"unified": calib}, {"run": "routed"},
                        tmp_path / "exp", "onnx", "fp32", check_images=[rgb[4], rgb[10]])
    assert meta["units"]["unified"]["parity"]["passed"], meta["units"]["unified"]["parity"]
    seen = torch.stack([torch.from_numpy(rgb[i]).permute(2, 0, 1).float() / 127.5 - 1
                        for i in (5, 11)])  # the pictures as the inferencer reads them
    with torch.inference_mode():
        feats = model.embed(extractor(seen))
        assert model.route(feats).tolist() == [0, 1]
        expected = model.score(extractor(seen)).image
    inferencer = Inferencer(tmp_path / "exp")
    got = torch.tensor([inferencer.predict(rgb[i]).score for i in (5, 11)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_routed_run_labels_its_bank_by_product(demo_root: Path, tmp_path: Path) -> None:
    from refad.training import fit

    run = tmp_path / "routed"
    fit(patchcore_config(demo_root, "model.route=true"), run, progress=False)
    model, _ = ckpt.load_model(run, "cpu")
    products = sorted(p.name for p in demo_root.iterdir() if p.is_dir())
    assert sorted(set(model.route_group.tolist())) == list(range(len(products)))
    assert set(model.bank_group.tolist()) == set(range(len(products)))
    assert model.routes.shape == (model.route_group.shape[0], model.bank.shape[1])
    result = CliRunner().invoke(app, ["test", "--run", str(run), "--no-report"])
    assert result.exit_code == 0, result.output


def test_every_product_keeps_a_bank_row_however_small_the_coreset() -> None:
    levels = two_products(2, seed=4)
    model = PatchCore(SPEC, PatchCoreConfig(coreset_ratio=1e-6, route=True))
    model.fit([levels], seed=0, groups=torch.tensor([0, 0, 1, 1]))
    assert sorted(model.bank_group.tolist()) == [0, 1] and model.bank.shape[0] == 2
    scores = model.eval().score(two_products(1, seed=5))
    assert torch.isfinite(scores.maps).all()
