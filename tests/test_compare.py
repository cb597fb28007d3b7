"""`refad.reporting.compare`: several methods, one dataset, one side-by-side table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config

from refad.config import load_config_file
from refad.errors import ConfigError
from refad.metrics import METRIC_NAMES
from refad.reporting.compare import compare, method_run_config

TINY = {
    "uniad": ["model.hidden_dim=32", "model.num_heads=4", "model.ffn_dim=64",
              "model.num_encoder_layers=1", "model.num_decoder_layers=1",
              "model.neighbour_window=3"],
    "crad": ["model.num_blocks=1", "model.expansion=32"],
}


def base_for(root: Path, cache: Path) -> dict:
    """What a user would pass: the dataset and a small shared backbone for every method."""
    return {
        "data": "mvtec", "root": root, "categories": ["fabric"],
        "backbone": "tf_efficientnet_lite2", "weights": "none",
        "levels": [2, 3], "image_size": 64, "epochs": 1, "batch_size": 4, "device": "cpu",
        "feature_cache": cache,
    }


def test_compare_trains_evaluates_and_tabulates(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare(["uniad", "crad"], base_for(demo_root, tmp_path / "cache"), out,
                     method_overrides=TINY, progress=False)
    assert list(result["methods"]) == ["uniad", "crad"]
    saved = json.loads((out / "comparison.json").read_text())
    assert saved == json.loads(json.dumps(result))
    table = (out / "comparison.md").read_text()
    for name, row in result["methods"].items():
        run_metrics = json.loads((out / name / "metrics.json").read_text())
        assert row["mean"] == run_metrics["mean"] and row["method"] == name
        assert set(row["mean"]) == set(METRIC_NAMES)
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
        assert f"{100 * row['mean']['i_auroc']:.1f}" in line
        assert f"{100 * row['mean']['p_auroc']:.1f}" in line
        assert set(row["categories"]) == {"fabric"}
    # each method kept its own preset schedule; the shared base reached both
    uniad = load_config_file(out / "uniad" / "config.json")
    crad = load_config_file(out / "crad" / "config.json")
    assert (uniad.train.optimizer, uniad.train.lr, crad.train.lr) == ("adamw", 1e-4, 1e-3)
    assert uniad.model.hidden_dim == 32 and crad.model.expansion == 32
    assert not hasattr(crad.model, "hidden_dim")
    for cfg in (uniad, crad):
        assert cfg.data.root == str(demo_root) and cfg.backbone.name == "tf_efficientnet_lite2"
    assert "| fabric |" in table and "I-AUROC" in table
    with pytest.raises(ConfigError, match="already holds a run"):
        compare(["uniad"], base_for(demo_root, tmp_path / "cache"), out,
                method_overrides={"uniad": TINY["uniad"]}, progress=False)
    # resumed with other settings: the table had shown them beside the saved run's figures
    before = (out / "crad" / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=r"crad: resume continues .* data.image_size, "
                                          r"train.epochs differ"):
        compare(["crad"], {**base_for(demo_root, tmp_path / "cache"), "image_size": 96,
                           "epochs": 5}, out, method_overrides={"crad": TINY["crad"]},
                resume=True, progress=False)
    assert (out / "crad" / "metrics.json").read_bytes() == before
    again = compare(["crad"], base_for(demo_root, tmp_path / "cache"), out,
                    method_overrides={"crad": TINY["crad"]}, resume=True, progress=False)
    assert again["methods"]["crad"]["mean"] == result["methods"]["crad"]["mean"]


def test_every_configuration_is_checked_before_training(demo_root: Path, tmp_path: Path) -> None:
    base = base_for(demo_root, tmp_path / "cache")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        compare(["uniad", "nope"], base, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="alpha"):
        compare(["crad", "rlr"], base, tmp_path / "b",
                method_overrides={"rlr": ["model.alpha=-1"]}, progress=False)
    with pytest.raises(ConfigError, match="not compared"):
        compare(["crad"], base, tmp_path / "c", method_overrides={"uniad": []}, progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_run_config_base_gives_data_not_method_settings(demo_root: Path) -> None:
    base = tiny_config(demo_root, "train.val_fraction=0.25")  # an RLR run at 64 px on Lite2
    cfg = method_run_config("crad-s", base)
    assert cfg.method == "crad" and cfg.model.expansion == 216
    assert cfg.data == base.data and cfg.device == base.device
    assert cfg.train.val_fraction == 0.25
    assert cfg.backbone.name == "tf_efficientnet_b4" and cfg.train.lr == 1e-3
    cfg = method_run_config("crad-s", base, ["backbone.name=tf_efficientnet_lite2"])
    assert cfg.backbone.name == "tf_efficientnet_lite2"
