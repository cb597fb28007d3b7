"""Guards on the data path: decompression bombs, wrong masks, undefined or non-finite metrics,
prediction output names, and the memory of full-size heatmaps."""

from __future__ import annotations

import csv
import json
import math
import shutil
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import box_mask, write_mask, write_rgb
from matplotlib import colormaps
from PIL import Image, ImageFile

from refad.api import predict
from refad.data import ImageDataset, Sample, image_size, read_image_rgb, read_mask
from refad.data.images import MAX_IMAGE_PIXELS
from refad.errors import DataError, RefadError
from refad.inference import evaluate as evaluate_module
from refad.inference import evaluate_run
from refad.inference.batches import output_names, relative_paths
from refad.metrics import METRIC_NAMES
from refad.models.base import Scores
from refad.pipeline.render import heatmap_rgb, normalise_map, overlay, resize_map
from refad.reporting.tables import metrics_markdown
from refad.runs import open_run

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---------------------------------------------------------------- decompression bombs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of width x height written by hand: tens of KB on disk,
    width x height bytes once PIL decodes it (PIL itself would need that memory to make it)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decode fails the test: a bomb must be refused from its header."""
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_bomb_is_refused_before_decoding_by_every_reader(bomb: Path, no_decoding: None) -> None:
    assert bomb.stat().st_size < 500_000
    limit = f"{MAX_IMAGE_PIXELS / 1e6:g}"
    want = f"{bomb}: 20000x20000 pixels is more than the limit of {limit} megapixels"
    for read in (read_image_rgb, image_size, lambda p: read_mask(p, (20000, 20000))):
        with pytest.raises(DataError) as info:
            read(bomb)
        assert str(info.value) == want


def test_image_over_our_limit_but_under_pils_error_is_refused(
    tmp_path: Path, no_decoding: None
) -> None:
    path = bomb_png(tmp_path / "big.png", 12000, 9000)  # 108 MP: PIL only warns here
    with pytest.raises(DataError, match=r"big.png: 12000x9000 pixels is more than the limit"):
        read_image_rgb(path)


def test_pil_warning_below_our_limit_is_not_an_error(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "wide.png", 9500, 9500)  # 90 MP: PIL warns, under our limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (9500, 9500)


def test_dataset_item_with_a_bomb_is_a_data_error(bomb: Path, no_decoding: None) -> None:
    dataset = ImageDataset([Sample(bomb, "c", 0, None, "good")], 32, MEAN, STD)
    with pytest.raises(DataError, match="megapixels"):
        dataset[0]


def test_predict_scores_every_image_but_the_bomb(
    trained_run: Path, demo_root: Path, bomb: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, p in enumerate(sorted(demo_root.glob("*/test/good/*.png"))[:2]):
        shutil.copy(p, folder / f"img{i}.png")
    shutil.copy(bomb, folder / "bomb.png")
    report = predict(trained_run, [folder], tmp_path / "preds", device="cpu")
    assert sorted(Path(p.path).name for p in report.predictions) == ["img0.png", "img1.png"]
    assert len(report.failures) == 1
    assert "bomb.png: 20000x20000 pixels is more than the limit" in report.failures[0]


# ---------------------------------------------------------------- masks


def _mask_sample(tmp_path: Path, label: int, mask: np.ndarray | None, *,
                 raw: bool = False, label_map: bool = False) -> Sample:
    image = tmp_path / "img.png"
    write_rgb(image, (12, 16))
    path = None
    if mask is not None:
        path = tmp_path / "img_mask.png"
        if raw:
            Image.fromarray(mask.astype(np.uint8)).save(path)
        else:
            write_mask(path, mask)
    return Sample(image, "c", label, path, "good" if label == 0 else "crack",
                  mask_is_label_map=label_map)


def test_mask_of_a_good_image_with_defect_pixels_is_refused(tmp_path: Path) -> None:
    sample = _mask_sample(tmp_path, 0, box_mask((12, 16), side=4))
    with pytest.raises(DataError) as info:
        ImageDataset([sample], 8, MEAN, STD)[0]
    assert str(info.value) == f"{sample.mask}: mask of a good image has 16 defect pixels"


def test_empty_mask_of_a_defective_image_is_refused(tmp_path: Path) -> None:
    sample = _mask_sample(tmp_path, 1, np.zeros((12, 16), bool))
    with pytest.raises(DataError) as info:
        ImageDataset([sample], 8, MEAN, STD)[0]
    assert str(info.value).startswith(f"{sample.mask}: mask of a defective image is empty")


def test_mask_stored_as_zero_one_says_how_to_store_it(tmp_path: Path) -> None:
    sample = _mask_sample(tmp_path, 1, box_mask((12, 16)).astype(np.uint8), raw=True)
    with pytest.raises(DataError) as info:
        ImageDataset([sample], 8, MEAN, STD)[0]
    assert str(info.value) == (
        f"{sample.mask}: mask of a defective image is empty: it holds values 0..1; "
        "store masks as 0/255 (binarised at > 127)"
    )


def test_empty_label_map_mask_of_a_defective_image_is_refused(tmp_path: Path) -> None:
    sample = _mask_sample(tmp_path, 1, np.zeros((12, 16), np.uint8), raw=True, label_map=True)
    with pytest.raises(DataError, match="mask of a defective image is empty"):
        ImageDataset([sample], 8, MEAN, STD)[0]


def test_soft_edged_mask_and_empty_good_mask_pass(tmp_path: Path) -> None:
    soft = np.zeros((12, 16), np.uint8)
    soft[3:9, 4:12] = 90  # anti-aliased rim ...
    soft[4:8, 5:11] = 200
    soft[5:7, 6:10] = 255  # ... around a solid core
    (tmp_path / "d").mkdir()
    defective = _mask_sample(tmp_path / "d", 1, soft, raw=True)
    assert ImageDataset([defective], 12, MEAN, STD)[0]["mask"].sum() > 0
    good = _mask_sample(tmp_path, 0, np.zeros((12, 16), bool))
    assert ImageDataset([good], 12, MEAN, STD)[0]["mask"].sum() == 0


# ---------------------------------------------------------------- metrics


def _without_defects(demo_root: Path, tmp_path: Path, category: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    for folder in (root / category / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(root / category / "ground_truth")
    return root


def test_mean_is_over_the_categories_where_a_metric_is_defined(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    run = open_run(trained_run, "cpu")
    categories = sorted(p.name for p in demo_root.iterdir() if p.is_dir())
    gone = categories[0]
    data = run.config.data.model_copy(update={"root": str(_without_defects(demo_root, tmp_path,
                                                                           gone))})
    result = evaluate_run(run, data, progress=False)
    assert math.isnan(result["categories"][gone]["i_auroc"])
    others = [result["categories"][c] for c in categories[1:]]
    for name in METRIC_NAMES:
        assert result["mean"][name] == pytest.approx(np.mean([m[name] for m in others]))
        assert result["mean_categories"][name] == len(categories) - 1
    note = next(n for n in result["notes"] if n.startswith("i_auroc"))
    assert f"undefined for category {gone} (no defective test image)" in note
    assert f"mean over {len(categories) - 1} of {len(categories)} categories" in note
    assert note in metrics_markdown(result)


def test_notes_name_each_reason_and_a_metric_no_category_defines() -> None:
    from refad.inference.evaluate import summarise

    nan = math.nan
    per = {"a": {**dict.fromkeys(METRIC_NAMES, 0.5), "i_auroc": nan},
           "b": {**dict.fromkeys(METRIC_NAMES, 0.7), "i_auroc": nan}}
    mean, used, notes = summarise(per, {"a": (0, 3), "b": (2, 0)})
    assert math.isnan(mean["i_auroc"]) and used["i_auroc"] == 0
    assert mean["p_auroc"] == pytest.approx(0.6) and used["p_auroc"] == 2
    assert notes == ["i_auroc: undefined for categories a (no normal test image), "
                     "b (no defective test image); no category defines it"]


def _patch_scores(monkeypatch: pytest.MonkeyPatch, value: float, maps: bool = False) -> None:
    images = evaluate_module.Scorer.images

    def broken(self, batch: torch.Tensor) -> Scores:
        s = images(self, batch)
        if maps:
            return Scores(maps=torch.full_like(s.maps, value), image=s.image)
        return Scores(maps=s.maps, image=torch.full_like(s.image, value))

    monkeypatch.setattr(evaluate_module.Scorer, "images", broken)


@pytest.mark.parametrize(("value", "maps"), [(math.inf, False), (math.nan, False),
                                             (math.inf, True)])
def test_non_finite_scores_give_no_metrics(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, value: float, maps: bool
) -> None:
    _patch_scores(monkeypatch, value, maps)
    with pytest.raises(RefadError) as info:
        evaluate_run(open_run(trained_run, "cpu"), progress=False)
    assert str(info.value) == (
        f"{trained_run}: the model gives non-finite scores (training diverged?); "
        "no metrics written"
    )


def test_non_finite_score_gives_no_decision(
    trained_run: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _patch_scores(monkeypatch, math.nan)
    image = sorted(demo_root.glob("*/test/good/*.png"))[0]
    report = predict(trained_run, [image], tmp_path / "p", device="cpu")
    (row,) = report.predictions
    assert row.anomalous is None and row.normalised_score is None
    assert "not finite" in row.note
    saved = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert saved["predictions"][0]["anomalous"] is None and saved["predictions"][0]["note"]


# ---------------------------------------------------------------- prediction names


def test_relative_paths_start_at_the_common_parent(tmp_path: Path) -> None:
    a, b = tmp_path / "in" / "a" / "x.png", tmp_path / "in" / "b" / "x.png"
    a.parent.mkdir(parents=True)
    b.parent.mkdir()
    assert [str(p) for p in relative_paths([a, b], [a, b])] == ["a/x.png", "b/x.png"]
    assert [str(p) for p in relative_paths([a], [a])] == ["x.png"]
    folder = tmp_path / "in"
    assert [str(p) for p in relative_paths([folder], [a, b])] == ["a/x.png", "b/x.png"]
    assert [str(p) for p in relative_paths([folder / "a", folder / "b"], [a, b])] == [
        "a/x.png", "b/x.png"]


def test_output_names_keep_the_suffix_only_to_stay_distinct() -> None:
    from pathlib import PurePosixPath as P

    names = output_names([P("c/a.png"), P("c/a.jpg"), P("c/a.png.jpg"), P("c/b.png"),
                          P("d/a.png"), P("x.png"), P("x_1.png")])
    assert [str(n) for n in names] == ["c/a.png", "c/a.jpg", "c/a.png.jpg", "c/b", "d/a", "x",
                                       "x_1"]


def test_predict_outputs_mirror_the_input_tree(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    src = sorted(demo_root.glob("*/test/good/*.png"))[0]
    folder = tmp_path / "in"
    files = ["x.png", "x_1.png", "sub/x.png", "c/a.png", "c/a.jpg"]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).save(folder / name)
    out = tmp_path / "preds"
    report = predict(trained_run, [folder], out, device="cpu")
    assert not report.failures
    heatmaps = {Path(p.heatmap) for p in report.predictions}
    assert heatmaps == {out / "x_heatmap.png", out / "x_1_heatmap.png",
                        out / "sub" / "x_heatmap.png", out / "c" / "a.png_heatmap.png",
                        out / "c" / "a.jpg_heatmap.png"}
    assert all(h.is_file() for h in heatmaps)
    assert all(Path(p.overlay).is_file() for p in report.predictions)
    saved = json.loads((out / "predictions.json").read_text())
    assert sorted(r["relative_path"] for r in saved["predictions"]) == sorted(files)
    assert all(Path(r["path"]).is_absolute() for r in saved["predictions"])
    with (out / "predictions.csv").open() as f:
        assert sorted(r["relative_path"] for r in csv.DictReader(f)) == sorted(files)


# ---------------------------------------------------------------- heatmaps


def _old_heatmap(unit_map: np.ndarray) -> np.ndarray:
    return (colormaps["jet"](unit_map)[..., :3] * 255).round().astype(np.uint8)


def test_lookup_table_heatmap_matches_matplotlib() -> None:
    rng = np.random.default_rng(0)
    edges = np.array([0.0, 1.0, 0.5, 1 / 256, 255 / 256, 1 - 1e-7, 1e-7], np.float32)
    for unit in (rng.random((64, 80)).astype(np.float32), rng.random((33, 7)), edges[None]):
        new = heatmap_rgb(unit)
        assert new.dtype == np.uint8 and new.shape == (*unit.shape, 3)
        assert np.abs(new.astype(int) - _old_heatmap(unit)).max() <= 1


def test_full_size_rendering_stays_within_its_memory() -> None:
    """At 4000x4000 a float32 map is 64 MB and a uint8 RGB picture 48 MB: the results (unit
    map, heatmap, overlay) hold 160 MB, and reading the resized map back from PIL briefly holds
    it twice (128 MB). One float64 map of that size is 128 MB more (160 + 128 = 288 MB) and
    matplotlib's float64 RGBA copy 512 MB (the old renderer peaked at 1.28 GB here), so a bound
    of 256 MB leaves room for the row-block temporaries and none for a float64 full-size array."""
    side = 4000
    amap = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    image = np.zeros((side, side, 3), np.uint8)
    tracemalloc.start()
    try:
        unit = normalise_map(resize_map(amap, side, side), 0.2, 0.8)
        heat = heatmap_rgb(unit)
        mixed = overlay(image, heat)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unit.dtype == np.float32 and heat.dtype == mixed.dtype == np.uint8
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_overlay_and_normalise_keep_their_results() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    heat = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for weight in (0.5, 0.3):
        old = ((1 - weight) * image.astype(np.float32) + weight * heat.astype(np.float32))
        np.testing.assert_array_equal(overlay(image, heat, weight),
                                      old.round().clip(0, 255).astype(np.uint8))
    amap = rng.random((40, 30)).astype(np.float32) * 3
    np.testing.assert_allclose(normalise_map(amap, 0.5, 2.5),
                               np.clip((amap - 0.5) / 2.0, 0, 1), atol=1e-6)


def _run_with_own_data(trained_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's run whose config points at a private copy of its dataset, for
    tests that alter the data (both are shared by other tests)."""
    from refad.runs import RunDir

    cfg = RunDir(trained_run).read_config()
    root = tmp_path / "data"
    shutil.copytree(cfg.data.root, root)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    RunDir(run).write_config(cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"root": str(root)})}))
    return run, root


def test_non_binary_masks_are_reported_in_the_metrics(trained_run: Path, tmp_path: Path) -> None:
    """Soft mask values are accepted (real masks have anti-aliased edges) but never silently:
    the evaluation says how many masks the > 0.5 cut had to decide."""
    from refad.api import evaluate

    run, root = _run_with_own_data(trained_run, tmp_path)
    mask = sorted((root / "fabric" / "ground_truth").rglob("*.png"))[0]
    arr = np.asarray(Image.open(mask).convert("L")).copy()
    arr[(arr == 0) & (np.roll(arr, 1, axis=0) == 255)] = 100  # a soft rim, still 0..255
    Image.fromarray(arr).save(mask)
    result = evaluate(run, device="cpu", progress=False)
    assert any(n.startswith("fabric: 1 of") and "not binary" in n for n in result["notes"])
    assert not any(n.startswith("mesh:") and "not binary" in n for n in result["notes"])
    assert json.loads((run / "metrics.json").read_text())["notes"] == result["notes"]


def _with_exif_orientation(path: Path, size: tuple[int, int]) -> Path:
    """Re-save an image as a JPEG of `size` whose EXIF says "turn 90 degrees to display"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    target = path.with_suffix(".jpg")
    Image.open(path).convert("RGB").resize(size).save(target, exif=exif, quality=95)
    path.unlink()
    return target


def test_masks_of_images_with_an_exif_orientation_are_reported(
    trained_run: Path, tmp_path: Path
) -> None:
    """refad does not apply EXIF orientation; a mask drawn on the turned picture of a square
    image was applied to the stored pixels with no word (pixel metrics silently wrong)."""
    from refad.api import evaluate

    run, root = _run_with_own_data(trained_run, tmp_path)
    image = sorted((root / "fabric" / "test").glob("[!g]*/*.png"))[0]
    _with_exif_orientation(image, Image.open(image).size)
    result = evaluate(run, device="cpu", progress=False)
    assert any(n.startswith("fabric: 1 of") and "EXIF orientation" in n
               for n in result["notes"]), result["notes"]
    assert not any(n.startswith("mesh:") and "EXIF" in n for n in result["notes"])


def test_a_mask_size_mismatch_names_the_exif_orientation_that_explains_it(
    tmp_path: Path
) -> None:
    write_rgb(tmp_path / "a.png", (48, 64))
    image = _with_exif_orientation(tmp_path / "a.png", (64, 48))
    write_mask(tmp_path / "a_mask.png", box_mask((64, 48), 1, 1, 4))  # as a viewer shows it
    with pytest.raises(DataError, match="differs from image .* carries EXIF orientation 6"):
        read_mask(tmp_path / "a_mask.png", image_size(image), image=image)
