"""Dataset layouts: MVTec-AD folders, VisA split csv, plain folders, and the dispatcher."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers_data import SHARED_DATA, box_mask, make_mvtec_category, write_mask, write_rgb
from PIL import Image

from refad.data import (
    ImageDataset,
    Sample,
    find_mask,
    folder_samples,
    list_mvtec_categories,
    load_split,
    mvtec_samples,
    visa_samples,
)
from refad.errors import ConfigError, DataError

VISA_CSV = SHARED_DATA / "visa_split" / "1cls.csv"

# ----------------------------------------------------------------------------- MVTec


def test_mvtec_all_categories_sorted(tmp_path):
    make_mvtec_category(tmp_path, "zipper", n_train=2, defects={"broken": 1, "rough": 2})
    make_mvtec_category(tmp_path, "bottle", n_train=3, defects={"crack": 2})
    (tmp_path / "notes").mkdir()  # a folder without train/good is not a category
    assert list_mvtec_categories(tmp_path) == ["bottle", "zipper"]

    train = mvtec_samples(tmp_path, "train")
    assert [s.category for s in train] == ["bottle"] * 3 + ["zipper"] * 2
    assert all(s.label == 0 and s.mask is None and s.defect == "good" for s in train)
    assert [s.image.name for s in train[:3]] == ["000.png", "001.png", "002.png"]

    test = mvtec_samples(tmp_path, "test")
    zipper = [s for s in test if s.category == "zipper"]
    assert [(s.defect, s.image.name, s.label) for s in zipper] == [
        ("broken", "000.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("rough", "000.png", 1),
        ("rough", "001.png", 1),
    ]
    for s in zipper:
        if s.label:
            assert s.mask == tmp_path / "zipper" / "ground_truth" / s.defect / (
                s.image.stem + "_mask.png"
            )
        else:
            assert s.mask is None
    assert mvtec_samples(tmp_path, "test") == test  # deterministic


def test_mvtec_select_categories_and_unknown(tmp_path):
    for name in ("a", "b", "c"):
        make_mvtec_category(tmp_path, name, n_train=1)
    picked = mvtec_samples(tmp_path, "train", categories=["c", "a"])
    assert [s.category for s in picked] == ["a", "c"]
    with pytest.raises(DataError) as err:
        mvtec_samples(tmp_path, "train", categories=["a", "carpet"])
    msg = str(err.value)
    assert "carpet" in msg and "available: a, b, c" in msg


def test_mvtec_root_may_be_one_category(tmp_path):
    cat = make_mvtec_category(tmp_path, "screw", n_train=2)
    assert list_mvtec_categories(cat) == ["screw"]
    assert len(mvtec_samples(cat, "train")) == 2


def test_mvtec_mask_without_suffix_and_other_extension(tmp_path):
    cat = make_mvtec_category(tmp_path, "pill", defects={"color": 2}, mask_suffix="")
    gt = cat / "ground_truth" / "color"
    with Image.open(gt / "001.png") as png:
        png.save(gt / "001.bmp", format="BMP")
    (gt / "001.png").unlink()
    masks = [s.mask.name for s in mvtec_samples(tmp_path, "test") if s.label]
    assert masks == ["000.png", "001.bmp"]


def test_find_mask_prefers_mask_suffix_and_rejects_ambiguity(tmp_path):
    image = tmp_path / "img" / "007.jpg"
    write_mask(tmp_path / "gt" / "007.png", box_mask((4, 4)))
    assert find_mask(tmp_path / "gt", image) == tmp_path / "gt" / "007.png"
    write_mask(tmp_path / "gt" / "007_mask.png", box_mask((4, 4)))
    assert find_mask(tmp_path / "gt", image) == tmp_path / "gt" / "007_mask.png"
    assert find_mask(tmp_path / "gt", tmp_path / "img" / "008.png") is None
    write_mask(tmp_path / "gt" / "007_mask.tif", box_mask((4, 4)))
    with pytest.raises(DataError, match="ambiguous mask"):
        find_mask(tmp_path / "gt", image)


def test_mvtec_missing_mask_names_image(tmp_path):
    cat = make_mvtec_category(tmp_path, "cable", defects={"cut": 2})
    (cat / "ground_truth" / "cut" / "001_mask.png").unlink()
    with pytest.raises(DataError) as err:
        mvtec_samples(tmp_path, "test")
    assert str(cat / "test" / "cut" / "001.png") in str(err.value)
    assert "no mask" in str(err.value)


def test_mvtec_good_image_gets_zero_mask(tmp_path):
    make_mvtec_category(tmp_path, "tile", n_good=1, defects={"oil": 1}, hw=(10, 10))
    test = mvtec_samples(tmp_path, "test")
    ds = ImageDataset(test, 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    by_defect = {ds[i]["path"].split("/")[-2]: ds[i] for i in range(len(ds))}
    assert by_defect["good"]["mask"].sum() == 0
    assert by_defect["oil"]["mask"].sum() == 16  # the 4x4 box written by the helper


def test_mvtec_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        mvtec_samples(tmp_path / "nope", "train")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="no categories found"):
        list_mvtec_categories(tmp_path / "empty_root")

    cat = make_mvtec_category(tmp_path / "ds", "wood", n_train=1)
    for f in (cat / "train" / "good").iterdir():
        f.unlink()
    (cat / "train" / "good" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as err:
        mvtec_samples(tmp_path / "ds", "train")
    assert str(cat / "train" / "good") in str(err.value) and "no images" in str(err.value)

    cat2 = make_mvtec_category(tmp_path / "ds2", "grid", defects={"bent": 1})
    (cat2 / "test" / "glue").mkdir()
    with pytest.raises(DataError, match=r"test/glue: folder holds no images"):
        mvtec_samples(tmp_path / "ds2", "test")

    with pytest.raises(ConfigError, match="split"):
        mvtec_samples(tmp_path / "ds2", "val")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- VisA


def _write_csv(path: Path, rows: list[dict[str, str]], columns=("object", "split", "label",
                                                                 "image", "mask")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _small_visa(root: Path) -> None:
    rows = []
    for obj in ("pcb1", "candle"):
        for i in range(2):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            write_rgb(root / rel, (8, 10), seed=i, fmt="JPEG")
            rows.append({"object": obj, "split": "train", "label": "normal", "image": rel,
                         "mask": ""})
        rel = f"{obj}/Data/Images/Normal/0009.JPG"
        write_rgb(root / rel, (8, 10), seed=9, fmt="JPEG")
        rows.append({"object": obj, "split": "test", "label": "normal", "image": rel, "mask": ""})
        rel = f"{obj}/Data/Images/Anomaly/000.JPG"
        mrel = f"{obj}/Data/Masks/Anomaly/000.png"
        write_rgb(root / rel, (8, 10), seed=5, fmt="JPEG")
        labels = np.zeros((8, 10), np.uint8)
        labels[2:4, 3:6] = 1  # VisA masks are label maps: defect pixels hold 1, 2, ...
        (root / mrel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(root / mrel)
        rows.append({"object": obj, "split": "test", "label": "anomaly", "image": rel,
                     "mask": mrel})
    _write_csv(root / "split_csv" / "1cls.csv", rows)


def test_visa_small_csv(tmp_path):
    _small_visa(tmp_path)
    train = visa_samples(tmp_path, "train")
    assert [(s.category, s.image.name) for s in train] == [
        ("candle", "0000.JPG"), ("candle", "0001.JPG"), ("pcb1", "0000.JPG"), ("pcb1", "0001.JPG")
    ]
    test = visa_samples(tmp_path, "test", categories=["pcb1"])
    assert [(s.label, s.defect) for s in test] == [(1, "anomaly"), (0, "good")]
    ds = ImageDataset(test, 10, (0.5,) * 3, (0.5,) * 3)
    assert ds[0]["mask"].sum() > 0  # label-map mask read as non-zero
    assert ds[1]["mask"].sum() == 0
    with pytest.raises(DataError, match="available: candle, pcb1"):
        visa_samples(tmp_path, "test", categories=["fryum"])


@pytest.mark.parametrize("edit, words", [
    # an object that is a path put a per-category run's checkpoints over another run's files
    (lambda t: t.replace("pcb1,test,anomaly", "../../victim,test,anomaly"),
     r"line 5: category '../../victim' is not a plain name"),
    (lambda t: t.replace("candle,train", "/tmp/victim,train", 1),
     r"line 6: category '/tmp/victim' is not a plain name"),
    (lambda t: t.replace("pcb1,test,normal", " ,test,normal"), r"line 4: category '' is not"),
    # a mistyped split made the row vanish (I-AUROC on 2 of 3 defects, no word)
    (lambda t: t.replace("candle,test,anomaly", "candle,Test,anomaly"),
     r"line 9: split must be train or test, got 'Test'"),
    # listed twice: scored twice, or a training image among the test images
    (lambda t: t + "pcb1,test,normal,pcb1/Data/Images/Normal/0000.JPG,\n",
     r"line 10: pcb1/Data/Images/Normal/0000.JPG is listed again \(first on line 2\)"),
    (lambda t: t.replace("Masks/Anomaly/000.png", "Images/Anomaly/000.JPG", 1),
     r"line 5: the mask is the image itself"),
])
def test_visa_csv_rows_that_would_be_silently_wrong_are_refused(tmp_path, edit, words):
    _small_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text(edit(csv_path.read_text().replace("\r\n", "\n")))
    for split in ("train", "test"):  # the whole file, whichever split is read
        with pytest.raises(DataError, match=words):
            visa_samples(tmp_path, split)


def test_visa_csv_errors_name_the_file_line_despite_blank_lines(tmp_path):
    _small_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    lines = csv_path.read_text().replace("\r\n", "\n").splitlines()
    lines.insert(2, "")  # a blank line counted by the file, not by the csv rows
    lines.append("pcb1,test,anomaly,pcb1/Data/Images/Anomaly/gone.JPG,x.png")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"gone.JPG: image listed in .*1cls.csv line "
                                        rf"{len(lines)} not found"):
        visa_samples(tmp_path, "test")


def test_visa_csv_missing_columns(tmp_path):
    _write_csv(tmp_path / "split_csv" / "1cls.csv",
               [{"object": "a", "split": "train", "image": "x.JPG"}],
               columns=("object", "split", "image"))
    with pytest.raises(DataError) as err:
        visa_samples(tmp_path, "train")
    assert "1cls.csv" in str(err.value) and "label, mask" in str(err.value)


def test_visa_missing_file_and_custom_csv_path(tmp_path):
    _small_visa(tmp_path)
    (tmp_path / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DataError) as err:
        visa_samples(tmp_path, "train")
    assert "candle/Data/Images/Normal/0001.JPG" in str(err.value) and "line" in str(err.value)
    (tmp_path / "pcb1/Data/Masks/Anomaly/000.png").unlink()
    with pytest.raises(DataError, match=r"Masks/Anomaly/000.png: mask listed in"):
        visa_samples(tmp_path, "test", categories=["pcb1"])
    with pytest.raises(DataError, match="split csv not found"):
        visa_samples(tmp_path, "train", split_csv=tmp_path / "other.csv")


def test_visa_real_split_csv_with_placeholders(tmp_path):
    if not VISA_CSV.is_file():
        pytest.skip(f"shared VisA split csv not found at {VISA_CSV} (read-only dev data)")
    with VISA_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Empty placeholder files at every listed path: the loader only checks existence.
    listed = [tmp_path / row[key] for row in rows for key in ("image", "mask") if row[key]]
    for folder in {p.parent for p in listed}:
        folder.mkdir(parents=True, exist_ok=True)
    for target in listed:
        target.touch()
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_bytes(VISA_CSV.read_bytes())

    train = visa_samples(tmp_path, "train")
    test = visa_samples(tmp_path, "test")
    assert len(train) == 8659
    assert Counter(s.label for s in test) == {0: 962, 1: 1200}
    assert len({s.category for s in train + test}) == 12
    expected = Counter((r["object"], r["split"]) for r in rows)
    got = Counter((s.category, "train") for s in train) + Counter((s.category, "test")
                                                                   for s in test)
    assert got == expected
    assert all(s.mask is not None and s.mask.is_file() for s in test if s.label == 1)
    assert train == sorted(train, key=lambda s: (s.category, str(s.image)))

    # Real pixels for two rows of one object, decoded through the dataset.
    normal = next(s for s in test if s.category == "pcb3" and s.label == 0)
    anomal = next(s for s in test if s.category == "pcb3" and s.label == 1)
    write_rgb(normal.image, (12, 12), fmt="JPEG")
    write_rgb(anomal.image, (12, 12), fmt="JPEG")
    labels = np.zeros((12, 12), np.uint8)
    labels[1:3, 1:3] = 2
    Image.fromarray(labels).save(anomal.mask, format="PNG")
    ds = ImageDataset([normal, anomal], 12, (0.5,) * 3, (0.5,) * 3)
    assert ds[0]["mask"].sum() == 0 and ds[1]["mask"].sum() == 4


# ----------------------------------------------------------------------------- plain folders


def test_folder_layout(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / "ok" / f"img{i}.jpg", (6, 6), seed=i, fmt="JPEG")
    for i in range(2):
        write_rgb(tmp_path / "ok_test" / f"t{i}.png", (6, 6), seed=10 + i)
    write_rgb(tmp_path / "bad" / "b0.png", (6, 6))
    write_rgb(tmp_path / "bad" / "b1.png", (6, 6))
    write_mask(tmp_path / "masks" / "b0_mask.png", box_mask((6, 6), 1, 1, 2))
    write_mask(tmp_path / "masks" / "b1.png", box_mask((6, 6), 1, 1, 3))
    (tmp_path / "ok" / ".DS_Store").write_bytes(b"junk")

    train = folder_samples("train", tmp_path / "ok", category="parts")
    assert [s.image.name for s in train] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert {s.category for s in train} == {"parts"}

    test = folder_samples("test", tmp_path / "ok", anomalous_dir=tmp_path / "bad",
                          mask_dir=tmp_path / "masks", test_normal_dir=tmp_path / "ok_test")
    assert [(s.image.name, s.label, s.defect) for s in test] == [
        ("t0.png", 0, "good"), ("t1.png", 0, "good"), ("b0.png", 1, "bad"), ("b1.png", 1, "bad")
    ]
    assert [s.mask.name if s.mask else None for s in test] == [None, None, "b0_mask.png",
                                                                "b1.png"]
    via = load_split({"kind": "folder", "normal_dir": str(tmp_path / "ok"),
                      "anomalous_dir": str(tmp_path / "bad"), "mask_dir": str(tmp_path / "masks"),
                      "test_normal_dir": str(tmp_path / "ok_test")}, "test")
    assert via == test


def test_folder_errors(tmp_path):
    write_rgb(tmp_path / "bad" / "b0.png", (6, 6))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder holds no images"):
        folder_samples("train", tmp_path / "empty")
    with pytest.raises(DataError, match=r"b0.png: defective image has no mask"):
        folder_samples("test", tmp_path / "empty", anomalous_dir=tmp_path / "bad")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"b0.png: defective image has no mask in .*masks"):
        folder_samples("test", tmp_path / "empty", anomalous_dir=tmp_path / "bad",
                       mask_dir=tmp_path / "masks")
    with pytest.raises(ConfigError, match="test_normal_dir"):
        folder_samples("test", tmp_path / "empty")


def test_folders_that_overlap_are_refused_for_either_split(tmp_path):
    """The same folder as training and test normals, or the defect folder as the mask folder,
    trained and tested with exit 0: metrics that looked fine and meant nothing."""
    for i in range(3):
        write_rgb(tmp_path / "ok" / f"img{i}.png", (6, 6), seed=i)
    write_rgb(tmp_path / "bad" / "b0.png", (6, 6))
    write_mask(tmp_path / "masks" / "b0_mask.png", box_mask((6, 6), 1, 1, 2))
    (tmp_path / "mixed").mkdir()
    write_rgb(tmp_path / "mixed" / "t0.png", (6, 6), seed=9)
    (tmp_path / "mixed" / "img1.png").symlink_to(tmp_path / "ok" / "img1.png")
    ok, bad, masks = tmp_path / "ok", tmp_path / "bad", tmp_path / "masks"
    for split in ("train", "test"):
        with pytest.raises(ConfigError, match=r"data.test_normal_dir: .*img0.png is also in "
                                              r"data.normal_dir"):
            folder_samples(split, ok, anomalous_dir=bad, mask_dir=masks, test_normal_dir=ok)
        with pytest.raises(ConfigError, match=r"img1.png is also in data.normal_dir"):
            folder_samples(split, ok, anomalous_dir=bad, mask_dir=masks,
                           test_normal_dir=tmp_path / "mixed")
        with pytest.raises(ConfigError, match=r"data.anomalous_dir: .*is also in"):
            folder_samples(split, ok, anomalous_dir=ok, mask_dir=masks)
        with pytest.raises(ConfigError, match=r"data.mask_dir: .* is the anomalous folder"):
            folder_samples(split, ok, anomalous_dir=bad, mask_dir=bad)
    # a mask folder that holds a copy of the defect image under the image's own name
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b0.png").symlink_to(bad / "b0.png")
    with pytest.raises(DataError, match=r"b0.png: is its own mask"):
        folder_samples("test", ok, anomalous_dir=bad, mask_dir=tmp_path / "photos")


def test_load_split_dispatch(tmp_path):
    make_mvtec_category(tmp_path, "nut", n_train=2)
    root = str(tmp_path)
    assert load_split({"kind": "mvtec", "root": root}, "train") == mvtec_samples(tmp_path, "train")
    with pytest.raises(ConfigError, match="'mvtec', 'visa', 'folder'"):
        load_split({"kind": "coco", "root": root}, "train")
    with pytest.raises(ConfigError, match="data: normal_dir"):
        load_split({"kind": "mvtec", "root": root, "normal_dir": root}, "train")


def test_sample_invariants(tmp_path):
    with pytest.raises(DataError, match="anomalous image has no ground-truth mask"):
        Sample(tmp_path / "x.png", "c", 1, None, "crack")
    with pytest.raises(DataError, match="label must be 0"):
        Sample(tmp_path / "x.png", "c", 2, None, "good")


@pytest.mark.parametrize("damage", ["no_train", "Good_misspelt"])
def test_mvtec_category_without_normal_training_images_is_named(tmp_path, damage):
    for name in ("a", "b"):
        make_mvtec_category(tmp_path, name, n_train=1)
    good = tmp_path / "b" / "train" / "good"
    if damage == "no_train":
        for f in good.iterdir():
            f.unlink()
        good.rmdir()
        (tmp_path / "b" / "train").rmdir()
    else:
        good.rename(good.with_name("Good"))
    (tmp_path / "license").mkdir()  # a folder that is no category is still ignored
    with pytest.raises(DataError, match=r"b/train/good: not found"):
        mvtec_samples(tmp_path, "train")


def test_visa_anomalous_rows_in_the_train_split_are_refused(tmp_path):
    """VisA's 2cls split files list anomalous images under train: one was trained on and set
    the calibrated threshold as a normal image, without a word."""
    _small_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    text = csv_path.read_text().replace("\r\n", "\n")
    csv_path.write_text(text.replace("pcb1,test,anomaly", "pcb1,train,anomaly"))
    with pytest.raises(DataError, match=r"line 5: an anomalous image in the train split"):
        visa_samples(tmp_path, "train")
