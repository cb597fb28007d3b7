"""Synthetic demo data: determinism, exact masks, defect sizes, MVTec layout on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refad.data import (
    SYNTHETIC_CATEGORIES,
    defect_types,
    list_mvtec_categories,
    make_demo_dataset,
    mvtec_samples,
    read_image_rgb,
    read_mask,
    render_sample,
)
from refad.errors import ConfigError, DataError

ALL_DEFECTS = [(c, d) for c in SYNTHETIC_CATEGORIES for d in defect_types(c)]


@pytest.mark.parametrize(("category", "defect"), ALL_DEFECTS)
def test_mask_is_exactly_where_the_defect_changed_the_image(category, defect):
    for k in range(3):
        damaged, mask = render_sample(category, 64, [5, k], defect)
        clean, clean_mask = render_sample(category, 64, [5, k], None)
        assert damaged.shape == (64, 64, 3) and damaged.dtype == np.uint8
        assert not clean_mask.any()
        changed = np.any(damaged != clean, axis=2)
        np.testing.assert_array_equal(mask, changed)
        low = 1e-5 if category == "wafer" else 0.001  # the high-resolution category's are tiny
        assert low <= mask.mean() <= 0.05, (category, defect, mask.mean())
        # clearly visible: the average changed pixel moves by tens of grey levels
        diff = np.abs(damaged.astype(int) - clean.astype(int)).max(axis=2)
        assert diff[mask].mean() >= 25


def test_render_is_deterministic_and_seed_dependent():
    a, ma = render_sample("screw", 64, 11, "scratch")
    b, mb = render_sample("screw", 64, 11, "scratch")
    c, _ = render_sample("screw", 64, 12, "scratch")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_normal_images_vary_but_stay_similar():
    imgs = np.stack([render_sample("fabric", 64, [0, k])[0] for k in range(4)]).astype(float)
    assert not np.array_equal(imgs[0], imgs[1])
    means = imgs.mean(axis=(1, 2, 3))
    assert means.max() - means.min() < 20  # same product, small lot-to-lot variation


def test_make_demo_dataset_layout_and_determinism(tmp_path):
    cats = ["mesh", "screw"]
    root = make_demo_dataset(tmp_path / "a", cats, n_train=3, n_test_good=2, n_test_defect=4,
                             size=64, seed=3)
    assert root == tmp_path / "a"
    assert list_mvtec_categories(root) == cats
    train = mvtec_samples(root, "train")
    test = mvtec_samples(root, "test")
    assert len(train) == 6 and len(test) == 12
    for cat in cats:
        defects = sorted(s.defect for s in test if s.category == cat and s.label == 1)
        kinds = defect_types(cat)
        assert defects == sorted([kinds[i % len(kinds)] for i in range(4)])
    for s in test:
        img = read_image_rgb(s.image)
        assert img.shape == (64, 64, 3)
        if s.label == 1:
            raw = np.asarray(Image.open(s.mask))
            assert set(np.unique(raw).tolist()) == {0, 255}
            assert read_mask(s.mask, (64, 64)).any()
            assert s.mask.name == s.image.stem + "_mask.png"
        else:
            assert s.mask is None
    assert not (root / "mesh" / "ground_truth" / "good").exists()

    again = make_demo_dataset(tmp_path / "b", cats, n_train=3, n_test_good=2, n_test_defect=4,
                              size=64, seed=3)
    other = make_demo_dataset(tmp_path / "c", cats, n_train=3, n_test_good=2, n_test_defect=4,
                              size=64, seed=4)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((root / f).read_bytes() != (other / f).read_bytes() for f in files)


def test_rerun_replaces_previous_demo_and_refuses_foreign_folders(tmp_path):
    root = tmp_path / "demo"
    make_demo_dataset(root, ["fabric"], n_train=4, n_test_good=1, n_test_defect=3, size=32)
    make_demo_dataset(root, ["fabric"], n_train=2, n_test_good=1, n_test_defect=0, size=32)
    assert len(mvtec_samples(root, "train")) == 2  # stale files of the first run are gone
    assert not (root / "fabric" / "ground_truth").exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a refad demo dataset"):
        make_demo_dataset(foreign, ["fabric"], n_train=1, size=32)
    assert (foreign / "keep.txt").read_text() == "user data"


def test_bad_arguments():
    with pytest.raises(ConfigError, match="available: fabric, mesh, screw, wafer, washer"):
        render_sample("carpet", 64, 0)
    with pytest.raises(ConfigError, match="available: broken, stain, thread"):
        render_sample("mesh", 64, 0, "scratch")
    with pytest.raises(ConfigError, match="size"):
        render_sample("mesh", 16, 0)
    with pytest.raises(ConfigError, match="seed"):
        render_sample("mesh", 64, -1)
    with pytest.raises(ConfigError, match="n_train"):
        make_demo_dataset("unused", ["mesh"], n_train=0)


def test_an_interrupted_generation_leaves_no_partial_dataset(tmp_path, monkeypatch):
    import refad.data.synthetic as synthetic

    root = tmp_path / "data"
    make_demo_dataset(root, categories=["fabric"], n_train=2, n_test_good=1, n_test_defect=1,
                      size=64, seed=0)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    real, calls = synthetic._save_png, []

    def interrupted(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(synthetic, "_save_png", interrupted)
    for target in (root, tmp_path / "fresh"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            make_demo_dataset(target, categories=["fabric", "screw"], n_train=2, n_test_good=1,
                              n_test_defect=1, size=64, seed=1)
    # the previous dataset is whole, the new one never appeared, nothing half-written remains
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_demo_refuses_an_output_that_is_a_file(tmp_path):
    from typer.testing import CliRunner

    from refad.cli.main import app

    taken = tmp_path / "taken"
    taken.write_text("")
    result = CliRunner().invoke(app, ["demo", "--out", str(taken), "--epochs", "1"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{taken}: exists and is not a folder" in lines[0]


@pytest.mark.parametrize("defect", ["particle", "scratch", "void"])
def test_wafer_defects_are_tens_of_pixels_on_a_1024_px_image(defect: str) -> None:
    """The high-resolution category: its defects stay 10-30 px whatever the seed, so a
    256-px resize leaves them 2-8 px wide, inside a texture of about that period."""
    for seed in range(3):
        image, mask = render_sample("wafer", 1024, seed, defect)
        clean, _ = render_sample("wafer", 1024, seed)
        ys, xs = np.nonzero(mask)
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 8 <= extent <= 40, (seed, extent)
        assert np.array_equal(mask, np.any(image != clean, axis=2))
