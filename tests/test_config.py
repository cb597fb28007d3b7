"""Configuration: one schema reached the same way by flags, `--set`, config files and the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config
from pydantic import BaseModel
from typer.testing import CliRunner

import refad.api
from refad.cli.main import app
from refad.config import (
    METHOD_CONFIGS,
    FolderData,
    RunConfig,
    apply_overrides,
    build_config,
    load_config_file,
    preset,
)
from refad.data import load_split, split_validation
from refad.errors import ConfigError, DataError
from refad.models.crad.config import CRADConfig
from refad.runs import RunDir

runner = CliRunner()


def leaf_fields(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every settable leaf of a config, as `section.field` -> current value."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(leaf_fields(value, f"{key}."))
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_every_schema_field_is_reachable_by_set_and_by_file(method: str, tmp_path: Path) -> None:
    """A field added to the schema needs no code elsewhere: `--set` and a config file reach it."""
    cfg = preset(method)
    fields = leaf_fields(cfg)
    assert "train.compile" in fields and "model.method" in fields
    for key, value in fields.items():
        if key in ("method", "model.method", "data.kind"):
            continue
        item = f"{key}={json.dumps(value)}"
        assert apply_overrides(cfg, [item]) == cfg, key
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    assert load_config_file(path) == cfg


def test_cli_flags_are_schema_fields() -> None:
    """Each flag of `refad train` lands in the same schema field as its `--set` spelling."""
    cfg = build_config(method="crad", root="/data", backbone="tf_efficientnet_lite0",
                       levels=[1, 2], image_size=96, epochs=3, batch_size=5, lr=0.01, seed=9,
                       per_category=True, val_fraction=0.2)
    spelled = apply_overrides(preset("crad"), [
        "data.root=/data", "backbone.name=tf_efficientnet_lite0", "backbone.levels=[1,2]",
        "data.image_size=96", "train.epochs=3", "train.batch_size=5", "train.lr=0.01",
        "train.seed=9", "train.mode=per-category", "train.val_fraction=0.2",
    ])
    assert cfg == spelled
    assert isinstance(cfg.model, CRADConfig) and cfg.model.expansion == 864


def test_model_and_data_are_discriminated_unions() -> None:
    with pytest.raises(ConfigError, match="model.hidden_dim"):  # UniAD's field on RLR
        apply_overrides(preset("rlr"), ["model.hidden_dim=64"])
    with pytest.raises(ConfigError, match="data.normal_dir"):  # folder field, MVTec layout
        apply_overrides(preset("rlr"), ["data.normal_dir=/x"])
    folder = build_config(data="folder", normal_dir="/good")
    assert isinstance(folder.data, FolderData) and folder.data.normal_dir == "/good"
    with pytest.raises(ConfigError, match="model.method"):
        RunConfig.parse({"method": "rlr", "model": {"method": "crad"}})
    from refad.models.registry import method_names, model_class

    assert set(METHOD_CONFIGS) == set(method_names())  # every method has a config and a model
    assert all(model_class(m).method == m for m in method_names())


def test_even_aggregate_kernel_and_huge_image_size_fail_at_validation() -> None:
    with pytest.raises(ConfigError, match="backbone.aggregate_kernel"):
        apply_overrides(preset("rlr"), ["backbone.aggregate_kernel=4"])
    with pytest.raises(ConfigError, match="data.image_size"):
        apply_overrides(preset("rlr"), ["data.image_size=100000"])


def test_config_json_before_the_unions_still_loads(tmp_path: Path) -> None:
    """A config.json of the flat layout (every data field, a model section without its
    method) reads as the same run."""
    old = {
        "method": "rlr",
        "data": {"kind": "mvtec", "root": "/d", "categories": None, "split_csv": None,
                 "normal_dir": None, "anomalous_dir": None, "mask_dir": None,
                 "test_normal_dir": None, "image_size": 128, "num_workers": 0},
        "backbone": {"name": "tf_efficientnet_lite2", "levels": [2, 3], "weights": "auto",
                     "aggregate_kernel": 3},
        "train": {"epochs": 12, "batch_size": 8},
        "model": {"alpha": 3.0},
        "device": "auto",
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = load_config_file(tmp_path / "config.json")
    assert cfg.data.root == "/d" and cfg.data.image_size == 128 and cfg.model.alpha == 3.0
    with pytest.raises(ConfigError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_config_file(tmp_path / "bad.json")


def test_train_config_file_reproduces_a_run(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`refad train --config` takes a saved config.json (flags and --set apply on top)."""
    saved = tmp_path / "saved.json"
    RunDir(tmp_path / "first").write_config(tiny_config(demo_root))
    saved.write_text((tmp_path / "first" / "config.json").read_text())
    seen: list[RunConfig] = []
    monkeypatch.setattr(refad.api, "fit", lambda config, *a, **k: seen.append(config) or [])
    result = runner.invoke(app, ["train", "--config", str(saved), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert seen[0] == tiny_config(demo_root)
    result = runner.invoke(app, ["train", "--config", str(saved), "--out", str(tmp_path / "r"),
                                 "--epochs", "5", "--set", "model.alpha=3"])
    assert result.exit_code == 0, result.output
    assert seen[1].train.epochs == 5 and seen[1].model.alpha == 3.0
    assert seen[1].data == seen[0].data
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "none.yaml"),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no such config file" in result.output
    # the mode flag both ways over a file: --no-per-category was taken for "not given"
    per_category = tmp_path / "pc.json"
    RunDir(tmp_path / "pc").write_config(tiny_config(demo_root, "train.mode=per-category"))
    per_category.write_text((tmp_path / "pc" / "config.json").read_text())
    for file, flag, mode in ((per_category, "--no-per-category", "unified"),
                             (per_category, None, "per-category"),
                             (saved, "--per-category", "per-category"), (saved, None, "unified")):
        result = runner.invoke(app, ["train", "--config", str(file), "--out",
                                     str(tmp_path / "r"), *([flag] if flag else [])])
        assert result.exit_code == 0, result.output
        assert seen[-1].train.mode == mode, (file.name, flag)


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=true", "train: epochs: expected numbers, not booleans"),
    ("backbone.levels=[true, 2]", "backbone: levels: expected numbers, not booleans"),
    ("train.lr=Infinity", "train.lr: Input should be a finite number"),
    ("train.threshold_quantile=NaN", "train.threshold_quantile: Input should be a finite"),
])
def test_booleans_and_infinities_are_not_numbers(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(preset("rlr"), [override])


def test_values_no_run_can_use_are_short_one_line_errors() -> None:
    """A 5000-digit --set value was a ValueError traceback; a seed past int64 passed
    validation and failed in torch.manual_seed after the run folder was made."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(preset("rlr"), ["train.epochs=" + "9" * 5000])
    assert str(info.value).startswith("override: train.epochs: ") and len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="train.seed: Input should be less than 4294967296"):
        apply_overrides(preset("rlr"), ["train.seed=9223372036854775808"])
    with pytest.raises(ConfigError, match="train.seed: Input should be greater than or equal"):
        apply_overrides(preset("rlr"), ["train.seed=-1"])


@pytest.mark.parametrize("name, text, expected", [
    ("dup.json", '{"train": {"epochs": 1, "epochs": 3}}', "key 'epochs' is given twice"),
    ("dup.json", '{"train": {"epochs": 1}, "train": {"lr": 0.1}}', "key 'train' is given twice"),
    ("dup.yaml", "train:\n  epochs: 1\n  epochs: 3\n", "line 2: key 'epochs' is given twice"),
    # a kilobyte that expands to 9**10 values (minutes and 14 GB before)
    ("laughs.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(9)) + "method: *j\n", r"YAML aliases \(\*name\) are not supported"),
])
def test_config_files_with_a_key_twice_or_aliases_are_refused(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    """The last of two keys won without a word (a second `train` section dropped the first)."""
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config_file(tmp_path / name)
    assert len(str(info.value)) < 300


def test_booleans_stay_valid_where_a_boolean_is_meant() -> None:
    assert apply_overrides(preset("rlr"), ["train.amp=true"]).train.amp is True


@pytest.mark.parametrize("args, expected", [
    (["--levels", ""], "--levels: expected comma-separated values, got ''"),
    (["--categories", ","], "--categories: expected comma-separated values, got ','"),
    (["--lr", "inf"], "train.lr: Input should be a finite number"),
])
def test_flags_that_name_nothing_or_infinity_are_refused(
    demo_root: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--root",
                                      str(demo_root), *args])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_holding_out_never_takes_every_training_image(demo_root: Path) -> None:
    samples = load_split({"kind": "mvtec", "root": str(demo_root)}, "train")
    train, held = split_validation(samples, 0.95, seed=0)
    for category in {s.category for s in samples}:
        assert sum(s.category == category for s in train) == 1
        assert sum(s.category == category for s in held) >= 1
    with pytest.raises(DataError, match="train.val_fraction: category 'fabric' has 1 normal"):
        split_validation([s for s in samples if s.category == "fabric"][:1], 0.5, seed=0)


def test_a_list_of_words_needs_no_quotes_in_set(demo_root: Path) -> None:
    """`--set data.categories=[fabric]` (the quotes of ["fabric"] are what a shell removes) was
    refused as 'Input should be a valid list (got '[fabric]')'."""
    config = tiny_config(demo_root, "data.categories=[fabric, screw]", "backbone.levels=[2,3]")
    assert config.data.categories == ["fabric", "screw"] and config.backbone.levels == [2, 3]
    with pytest.raises(ConfigError, match="data.categories"):
        tiny_config(demo_root, "data.categories=[fabric, [screw]]")  # nested: not guessed
