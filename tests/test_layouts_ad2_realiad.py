"""MVTec AD 2 and Real-IAD: split counts, labels and masks, one-line errors, and `refad train`
/ `refad test` end to end on generated trees laid out like the real datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_data import TINY, one_error_line
from helpers_layouts import make_mvtec_ad2, make_real_iad
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from refad.cli.main import app
from refad.config import RunConfig
from refad.data import load_split, validation_split
from refad.data.real_iad import view_of
from refad.errors import ConfigError, DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def ad2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_ad2(tmp_path_factory.mktemp("ad2") / "mvtec_ad_2")


@pytest.fixture(scope="module")
def riad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_real_iad(tmp_path_factory.mktemp("riad") / "Real-IAD")


# --- MVTec AD 2 ---------------------------------------------------------------------------


def test_mvtec_ad2_splits_labels_and_masks(ad2_root: Path) -> None:
    data = {"kind": "mvtec_ad2", "root": str(ad2_root)}
    train = load_split(data, "train")
    test = load_split(data, "test")
    val = validation_split(data)
    assert val is not None
    assert [len(x) for x in (train, val, test)] == [8, 6, 10]  # 2 objects x (4, 3, 2 + 3)
    assert {s.category for s in test} == {"can", "vial"}
    assert all(s.label == 0 and s.mask is None for s in [*train, *val])
    assert not {s.image for s in val} & {s.image for s in train}
    bad = [s for s in test if s.label == 1]
    assert len(bad) == 6 and {s.defect for s in bad} == {"bad"}
    for s in bad:  # test_public/bad/NNN_x.png -> test_public/ground_truth/bad/NNN_x_mask.png
        assert s.mask == s.image.parent.parent / "ground_truth" / "bad" / f"{s.image.stem}_mask.png"
    assert all(s.defect == "good" for s in test if s.label == 0)
    assert validation_split({"kind": "mvtec", "root": str(ad2_root)}) is None
    one = load_split({"kind": "mvtec_ad2", "root": str(ad2_root), "categories": ["vial"]}, "test")
    assert {s.category for s in one} == {"vial"} and len(one) == 5


def test_mvtec_ad2_calibrates_on_validation_by_default(ad2_root: Path) -> None:
    cfg = RunConfig.model_validate({"data": {"kind": "mvtec_ad2", "root": str(ad2_root)}})
    assert cfg.calibration_set == "validation"
    held = RunConfig.model_validate({"data": {"kind": "mvtec_ad2", "root": "x"},
                                     "train": {"val_fraction": 0.2}})
    assert held.calibration_set == "held_out"
    with pytest.raises(ValueError, match="layout with its own validation images"):
        RunConfig.model_validate({"data": {"kind": "mvtec", "root": "x"},
                                  "train": {"calibration_images": "validation"}})


def test_mvtec_ad2_missing_mask_or_validation_is_named(ad2_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(ad2_root, tmp_path / "ad2")
    mask = sorted((root / "can" / "test_public" / "ground_truth" / "bad").iterdir())[1]
    mask.unlink()
    with pytest.raises(DataError, match=mask.name.replace("_mask.png", ".png")) as err:
        load_split({"kind": "mvtec_ad2", "root": str(root)}, "test")
    assert "\n" not in str(err.value) and "_mask" in str(err.value)
    shutil.rmtree(root / "vial" / "validation")
    with pytest.raises(DataError, match="vial/validation/good: not found"):
        validation_split({"kind": "mvtec_ad2", "root": str(root)})


def test_refad_train_and_test_on_mvtec_ad2(ad2_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", "mvtec_ad2", "--root", str(ad2_root),
                                 "--out", str(run), *TINY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["test", "--run", str(run), "--no-progress", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "SegF1" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["decisions"]["calibration_images"] == ["dataset-validation"]
    for cat in ("can", "vial"):
        row = metrics["decisions"]["categories"][cat]
        assert row["tp"] + row["fn"] == 3 and row["fp"] + row["tn"] == 2  # test_public counts
        assert 0 <= row["seg_f1"] <= 1 and row["pixel_tp"] + row["pixel_fn"] > 0
    # a mask removed after training: `refad test` stops with one line naming the image
    root = shutil.copytree(ad2_root, tmp_path / "copy")
    victim = sorted((root / "vial" / "test_public" / "ground_truth" / "bad").iterdir())[0]
    victim.unlink()
    result = runner.invoke(app, ["test", "--run", str(run), "--root", str(root),
                                 "--no-progress", "--no-report"])
    assert victim.name.replace("_mask", "") in one_error_line(result)


# --- Real-IAD -----------------------------------------------------------------------------


def test_real_iad_splits_views_labels_and_masks(riad_root: Path) -> None:
    data = {"kind": "real_iad", "root": str(riad_root)}
    train, test = load_split(data, "train"), load_split(data, "test")
    assert len(train) == 2 * 3 * 5 and len(test) == 2 * (2 + 2) * 5  # objects x samples x views
    assert all(s.label == 0 for s in train)
    defective = [s for s in test if s.label == 1]
    assert len(defective) == 2 * 2 * 2  # views C1, C2 of each NG sample
    assert {view_of(s.image) for s in defective} == {"C1", "C2"}
    for s in defective:
        assert s.mask == s.image.with_suffix(".png") and s.defect in ("AK", "BX", "HS")
    ng_normal_views = [s for s in test if s.label == 0 and "/NG/" in s.image.as_posix()]
    assert len(ng_normal_views) == 2 * 2 * 3 and all(s.mask is None for s in ng_normal_views)
    sub = load_split({**data, "categories": ["toy_brick"]}, "test")
    assert {s.category for s in sub} == {"toy_brick"}


def _drop_entry(root: Path, obj: str, split: str, view: str) -> str:
    path = root / "realiad_jsons" / "realiad_jsons" / f"{obj}.json"
    doc = json.loads(path.read_text())
    gone = next(e for e in doc[split] if f"_{view}_" in e["image_path"])
    doc[split].remove(gone)
    path.write_text(json.dumps(doc))
    return gone["image_path"]


def test_real_iad_missing_view_mask_or_file(riad_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(riad_root, tmp_path / "r")
    data = {"kind": "real_iad", "root": str(root)}
    gone = _drop_entry(root, "audiojack", "test", "C4")
    with pytest.raises(DataError, match="lacks view C4") as err:
        load_split(data, "test")
    assert str(Path(gone).parent) in str(err.value)
    single = load_split({**data, "complete_views": False}, "test")
    assert len(single) == 2 * 4 * 5 - 1
    root2 = shutil.copytree(riad_root, tmp_path / "r2")
    mask = next((root2 / "realiad_1024" / "toy_brick" / "NG").rglob("*_C2_*.png"))
    mask.unlink()
    with pytest.raises(DataError, match=f"{mask.name}: file not found"):
        load_split({**data, "root": str(root2)}, "test")
    path = root2 / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="audiojack.json: not valid JSON"):
        load_split({**data, "root": str(root2)}, "train")
    with pytest.raises(ConfigError):
        load_split({**data, "resolution": "2048"}, "train")


def test_refad_train_and_test_on_real_iad(riad_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", "real_iad", "--root", str(riad_root),
                                 "--out", str(run), *TINY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["test", "--run", str(run), "--no-progress", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "per sample" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    rows = json.loads((run / "test_scores.json").read_text())["images"]
    per = metrics["samples"]["categories"]
    for cat in ("audiojack", "toy_brick"):
        assert (per[cat]["samples"], per[cat]["defective"]) == (4, 2)
        mine = [r for r in rows if r["category"] == cat]
        folders = sorted({str(Path(r["image"]).parent) for r in mine})
        score = [max(r["score"] for r in mine if str(Path(r["image"]).parent) == f)
                 for f in folders]
        label = [int("/NG/" in Path(f).as_posix()) for f in folders]
        assert per[cat]["i_auroc"] == pytest.approx(roc_auc_score(label, score))
    assert metrics["samples"]["mean"]["i_auroc"] == pytest.approx(
        np.mean([per[c]["i_auroc"] for c in per]))


def test_refad_train_refuses_a_missing_training_view(riad_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(riad_root, tmp_path / "r")
    _drop_entry(root, "toy_brick", "train", "C5")
    result = runner.invoke(app, ["train", "--data", "real_iad", "--root", str(root),
                                 "--out", str(tmp_path / "run"), *TINY])
    assert "lacks view C5" in one_error_line(result)
    root = shutil.copytree(riad_root, tmp_path / "r2")  # a training view listed but gone
    image = next((root / "realiad_1024" / "audiojack" / "OK" / "S0001").glob("*_C3_*.jpg"))
    image.unlink()
    result = runner.invoke(app, ["train", "--data", "real_iad", "--root", str(root),
                                 "--out", str(tmp_path / "run2"), *TINY])
    assert f"{image.name}: file not found" in one_error_line(result)
