"""Export to ONNX / OpenVINO: parity with the PyTorch model for every method, the refusal of a
graph that differs, the metadata's tamper checks, and the torch-free reader and renderer
matching refad's own (Lite0 with random weights at 64 px: seconds per export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refad.backbones import FeatureExtractor
from refad.config import MAX_IMAGE_SIZE
from refad.deploy import METADATA_FILE, Inferencer, preprocess, read_rgb
from refad.deploy.metadata import MAX_INPUT_SIZE, seal
from refad.errors import CheckpointError, ConfigError, DataError, RefadError
from refad.export import ScoringGraph, export_model
from refad.models.base import FeatureSpec
from refad.models.registry import build_model
from refad.pipeline.render import heatmap_rgb, normalise_map, resize_map

SIZE = 64
SMALL = {
    "rlr": {"num_layers": 2, "hidden_dims": [16, 32], "num_heads": 4},
    "uniad": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1,
              "num_decoder_layers": 1, "ffn_dim": 64, "neighbour_window": 3},
    "crad": {"num_blocks": 1, "expansion": 24},
}
CALIB = {"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0,
         "categories": {"a": {"threshold": 1.5}}}


def images(n: int, seed: int = 0, hw: tuple[int, int] = (72, 80)) -> list[np.ndarray]:
    """Smooth random pictures (closer to photos than white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (9, 10, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize(hw[::-1], Image.Resampling.BICUBIC)))
    return out


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", levels=[2, 3], weights=None)


def make_model(extractor: FeatureExtractor, method: str):
    spec = FeatureSpec(tuple(extractor.levels), tuple(extractor.channels),
                       tuple(extractor.output_shapes(SIZE)), SIZE)
    torch.manual_seed(0)
    return build_model(method, spec, SMALL[method]).eval()


def export(extractor, method, out, fmt="onnx", precision="fp32", calib=CALIB, **kw):
    return export_model(extractor, {"unified": make_model(extractor, method)},
                        {"unified": calib}, {"run": "test"}, out, fmt, precision,
                        calibration_images=images(4, 1), check_images=images(3), **kw)


@pytest.fixture(scope="module")
def rlr_export(extractor, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "rlr-onnx"
    export(extractor, "rlr", out)
    return out


def torch_outputs(extractor, method, rgbs):
    graph = ScoringGraph(extractor, make_model(extractor, method)).eval()
    batch = torch.from_numpy(np.stack([preprocess(im, SIZE, extractor.mean, extractor.std)
                                       for im in rgbs]))
    with torch.inference_mode():
        maps, scores = graph(batch)
    return maps.numpy(), scores.numpy()


@pytest.mark.parametrize("method", ["rlr", "uniad", "crad"])  # the reconstruction methods;
def test_onnx_parity_every_method(extractor, method, tmp_path) -> None:
    out = tmp_path / method if method != "rlr" else tmp_path / "rlr"
    meta = export(extractor, method, out)
    parity = meta["units"]["unified"]["parity"]
    assert parity["passed"] and parity["map_max_rel"] <= 1e-4 and parity["score_max_rel"] <= 1e-5
    assert meta["graph"]["opset"] >= 17 and meta["method"] == method
    rgbs = images(5, seed=7, hw=(50, 90))  # other images, other size, batch of 5
    ref_maps, ref_scores = torch_outputs(extractor, method, rgbs)
    results = Inferencer(out).predict(rgbs, category="a")
    scores = np.array([r.score for r in results])
    span = ref_maps.max() - ref_maps.min()
    raw = np.stack([r.raw_map for r in results])
    assert np.abs(raw - ref_maps).max() <= 1e-4 * span
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    assert [r.anomalous for r in results] == list(ref_scores > 1.5)
    assert results[0].threshold_source == "category:a" and results[0].anomaly_map.shape == (50, 90)


def test_prediction_fields_and_threshold_rules(rlr_export) -> None:
    inf = Inferencer(rlr_export)
    r = inf.predict(images(1)[0])
    assert (r.threshold, r.threshold_source) == (1.0, "global")
    assert r.anomalous == (r.score > 1.0) and r.normalised_score == pytest.approx(r.score)
    assert r.mask.dtype == bool and r.mask.shape == (72, 80)
    np.testing.assert_array_equal(r.mask, r.anomaly_map > 2.0)  # no pixel_threshold: ceiling
    assert r.heatmap.shape == (72, 80, 3) and r.heatmap.dtype == np.uint8
    o = inf.predict(images(1)[0], threshold=r.score + 1)
    assert (o.threshold_source, o.anomalous) == ("override", False)
    with pytest.raises(ConfigError, match="category"):
        inf.predict(images(1)[0], category="nope")
    # refad's one result type and step: the export's result is what `postprocess` makes of the
    # graph's map and score at the unit's typed calibration
    from refad.pipeline.postprocess import Prediction, postprocess

    assert type(r) is Prediction and inf.thresholds(None).pixel_threshold == 2.0
    again = postprocess(r.image, r.raw_map, r.score, inf.calibration().for_category(None))
    np.testing.assert_array_equal(again.mask, r.mask)
    assert (again.anomalous, again.normalised_score) == (r.anomalous, r.normalised_score)


def test_openvino_fp32_fp16_bf16_and_int8(extractor, tmp_path) -> None:
    for precision in ("fp32", "fp16", "bf16", "int8"):
        out = tmp_path / precision
        meta = export(extractor, "rlr", out, "openvino", precision)
        assert meta["graph"]["precision"] == precision and (out / "unified.xml").is_file()
        parity = meta["units"]["unified"]["parity"]
        if precision == "fp32":
            assert parity["map_max_rel"] <= 1e-4 and parity["score_max_rel"] <= 1e-5
        if precision == "int8":  # the backbone and the map tail stay float: scores stay close
            assert parity["score_max_rel"] <= 1e-2, parity
        r = Inferencer(out, runtime="openvino").predict(images(1)[0])
        assert np.isfinite(r.score) and r.anomaly_map.shape == (72, 80)
    with pytest.raises(ConfigError, match="runtime"):
        Inferencer(tmp_path / "fp32", runtime="onnxruntime")


def test_failed_parity_refuses_and_writes_nothing(extractor, tmp_path, monkeypatch) -> None:
    import refad.export.exporter as exporter

    real = exporter.open_runner

    def corrupted(*args, **kwargs):
        runner = real(*args, **kwargs)
        return lambda batch: (lambda m, s: (m + 0.01 * np.abs(m).max(), s))(*runner(batch))

    monkeypatch.setattr(exporter, "open_runner", corrupted)
    out = tmp_path / "refused"
    with pytest.raises(RefadError, match="export refused.*map max diff") as info:
        export(extractor, "rlr", out)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_the_graph_names_the_file(
    extractor, tmp_path, monkeypatch
) -> None:
    """ENOSPC was reported as "the ONNX exporter failed" after a second, doomed export."""
    import errno

    import refad.export.graph as graph

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    tried = []
    monkeypatch.setattr(graph, "_torchscript", full)
    monkeypatch.setattr(graph, "_dynamo", lambda *a, **k: tried.append("dynamo"))
    with pytest.raises(RefadError, match=r"unified\.onnx: cannot write \(No space left"):
        export(extractor, "rlr", tmp_path / "full")
    assert tried == [] and list(tmp_path.iterdir()) == []


def test_bad_export_arguments(extractor, tmp_path) -> None:
    with pytest.raises(ConfigError, match="precision"):
        export(extractor, "rlr", tmp_path / "a", "onnx", "int8")
    with pytest.raises(ConfigError, match="map_floor"):
        export(extractor, "rlr", tmp_path / "b", calib={"threshold": 1.0})
    with pytest.raises(DataError, match=r"check_images\[0\].*uint8"):
        export_model(extractor, {"unified": make_model(extractor, "rlr")}, {"unified": CALIB},
                     {}, tmp_path / "c", check_images=[np.zeros((8, 8), np.float32)])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        export(extractor, "rlr", tmp_path / "d")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_edited_metadata_and_foreign_graph_are_refused(extractor, rlr_export, tmp_path) -> None:
    edited = _copy(rlr_export, tmp_path / "edited")
    meta = json.loads((edited / METADATA_FILE).read_text())
    meta["units"]["unified"]["calibration"]["threshold"] = 0.5
    (edited / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited after export"):
        Inferencer(edited)
    broken = _copy(rlr_export, tmp_path / "broken")
    (broken / METADATA_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Inferencer(broken)
    for token in ("NaN", "Infinity", "-Infinity"):  # Python's json takes them; JSON does not
        text = (rlr_export / METADATA_FILE).read_text()
        edit = text.replace('"threshold": ', f'"threshold": {token}, "was": ', 1)
        (broken / METADATA_FILE).write_text(edit)
        with pytest.raises(CheckpointError, match=f"not valid JSON.*{token} is not a JSON number"):
            Inferencer(broken)
    (broken / METADATA_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a refad export"):
        Inferencer(broken)
    other = tmp_path / "other"
    export(extractor, "crad", other)
    swapped = _copy(rlr_export, tmp_path / "swapped")
    shutil.copy(other / "unified.onnx", swapped / "unified.onnx")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        Inferencer(swapped)


@pytest.mark.parametrize("size", [MAX_IMAGE_SIZE + 1, 10**6, 10**30])
def test_an_input_size_no_run_can_have_is_refused_before_any_image_is_resized(
    rlr_export, tmp_path, size
) -> None:
    """A sealed but foreign metadata file with a huge input.size made `predict --model`
    resize images to it before the graph's shape was checked (MemoryError, OverflowError)."""
    folder = _copy(rlr_export, tmp_path / "huge")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["input"]["size"] = size
    (folder / METADATA_FILE).write_text(json.dumps(seal(meta)))
    with pytest.raises(CheckpointError, match=f"input.size: {size} is above {MAX_IMAGE_SIZE}"):
        Inferencer(folder)
    assert MAX_INPUT_SIZE == MAX_IMAGE_SIZE  # the export writes the run's data.image_size


@pytest.mark.parametrize("values, words", [
    ({"threshold": 0}, r"calibration\.threshold: must be above 0"),
    ({"threshold": -3.0}, r"calibration\.threshold: must be above 0"),
    ({"map_floor": 100.0, "map_ceiling": 1.0}, "no colour range"),
    ({"map_floor": -1e308, "map_ceiling": 1e308}, "no colour range"),
])
def test_calibration_no_run_could_write_is_refused(rlr_export, tmp_path, values, words) -> None:
    """A sealed foreign file with a threshold of 0 called every image anomalous; an inverted
    or overflowing colour range painted heatmaps one colour (with numpy warnings)."""
    folder = _copy(rlr_export, tmp_path / "foreign")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["units"]["unified"]["calibration"].update(values)
    (folder / METADATA_FILE).write_text(json.dumps(seal(meta)))
    with pytest.raises(CheckpointError, match=words):
        Inferencer(folder)


def test_bad_images_give_one_line_errors(rlr_export, tmp_path) -> None:
    inf = Inferencer(rlr_export)
    bad = [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
           np.zeros((8, 8, 3), np.float32), tmp_path / "missing.png", 3]
    for item in bad:
        with pytest.raises(DataError) as info:
            inf.predict(item)
        assert "\n" not in str(info.value)
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(DataError, match="not an image"):
        inf.predict(tmp_path / "fake.png")
    with pytest.raises(DataError, match="float32"):
        inf.run(np.zeros((1, 3, SIZE + 1, SIZE + 1), np.float32))
    with pytest.raises(DataError, match="mode F"):
        inf.predict(Image.fromarray(np.zeros((4, 4), np.float32)))


def test_bad_inferencer_arguments_are_one_line_errors(rlr_export, tmp_path) -> None:
    """Each raised a TypeError/AttributeError or onnxruntime's own exception before."""
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    inf = Inferencer(rlr_export)
    cases = [
        (lambda: Inferencer(rlr_export, threads="x"), ConfigError, "threads"),
        (lambda: Inferencer(rlr_export, threads=0), ConfigError, "threads"),
        (lambda: Inferencer(None), ConfigError, "path"),
        (lambda: inf.predict_batch(str(image)), ConfigError, "images: expected a list"),
        (lambda: inf.predict_batch([image], batch_size="8"), ConfigError, "batch_size"),
        (lambda: inf.predict(image, category=["fabric"]), ConfigError, "category"),
        (lambda: inf.predict(image, threshold=True), ConfigError, "threshold"),
        # as the server refuses: a threshold at or below 0 flagged every image
        (lambda: inf.predict(image, threshold=0), ConfigError, "threshold: must be .* > 0"),
        (lambda: inf.predict(image, threshold=-5.0), ConfigError, "threshold: must be .* > 0"),
        (lambda: inf.run(np.zeros((0, 3, SIZE, SIZE), np.float32)), DataError, "B >= 1"),
        (lambda: inf.run([[1.0]]), DataError, "numpy array"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "I;16", "1", "CMYK"])
def test_reader_and_preprocessing_match_refad(tmp_path, mode) -> None:
    from refad.data.dataset import image_tensor
    from refad.data.images import read_image_rgb

    rgb = images(1, seed=3, hw=(13, 17))[0]
    base = Image.fromarray(rgb)
    img = {"I;16": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
           "RGBA": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]))}.get(mode)
    img = img if img is not None else base.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    ours = read_rgb(path)
    np.testing.assert_array_equal(ours, read_image_rgb(path))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    np.testing.assert_array_equal(preprocess(ours, 32, mean, std),
                                  image_tensor(ours, 32, mean, std).numpy())


def test_heatmap_matches_matplotlib() -> None:
    from matplotlib import colormaps

    amap = np.random.default_rng(0).random((16, 16)).astype(np.float32) * 3
    unit = normalise_map(resize_map(amap, 20, 12), 0.5, 2.5)
    ours = heatmap_rgb(unit)
    theirs = (colormaps["jet"](unit)[..., :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(ours, theirs)




def test_export_attention_equals_the_kernel_when_a_query_sees_no_key() -> None:
    """RLR masks a neighbourhood around each query; on a small feature map (2x2 at 32 px) it
    covers every key. The kernel then gives zeros, the plain softmax gave NaN, and the export
    of a valid 32-px run was refused by its own parity check."""
    from refad.export.graph import export_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=gen) for _ in range(3))
    allowed = torch.rand(5, 5, generator=gen) > 0.4
    allowed[0] = False  # query 0 may attend to nothing
    allowed[1] = True
    additive = torch.zeros(5, 5).masked_fill(~allowed, float("-inf"))
    for mask in (allowed, additive):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = export_attention(q, k, v, attn_mask=mask)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_parity_of_one_image_is_measured_against_the_range_of_all_check_images() -> None:
    """A 32-px image's map can be flat to 1e-6; measured against its own range, float
    rounding of 8e-6 read as 4x the range and refused the export."""
    from refad.export.parity import compare, map_span

    ref = np.stack([np.full((4, 4), 8.7734), np.linspace(7.7, 11.4, 16).reshape(4, 4)])
    got = ref + 8e-6
    scores = np.array([1.0, 2.0])
    span = map_span(ref)
    single = compare(ref[:1], scores[:1], got[:1], scores[:1], [], span)
    assert single["map_max_rel"] == pytest.approx(8e-6 / (11.4 - 7.7), rel=1e-3)
    assert compare(ref, scores, got, scores, [])["map_range"] == pytest.approx(11.4 - 7.7)


def test_a_score_at_its_threshold_is_a_tie_not_a_flip() -> None:
    """A category calibrated on one normal image has that image's score as its threshold; a
    graph 2e-7 above it (float rounding) decided the check image otherwise, the flip refused
    the export (PatchCore, OpenVINO). A real flip, past the rounding, still counts."""
    from refad.export.parity import compare

    maps = np.zeros((3, 4, 4))
    ref = np.array([19.5253, 18.0, 21.0])
    got = ref * np.array([1 + 2e-7, 1.0, 1.0])
    assert compare(maps, ref, maps, got, [19.5253])["decision_flips"] == 0
    flipped = np.array([19.5253, 19.6, 21.0])  # the second image crosses the threshold
    assert compare(maps, ref, maps, flipped, [19.5253])["decision_flips"] == 1


def test_attention_is_exported_in_the_fusable_pattern(rlr_export) -> None:
    """Every softmax reads logits plus mask straight from an Add or a MatMul (no clamp between,
    which kept OpenVINO from fusing the attention), and onnxruntime flushes denormals."""
    import onnx

    meta = json.loads((rlr_export / METADATA_FILE).read_text())
    graph_file = rlr_export / next(iter(meta["units"].values()))["graph"]
    graph = onnx.load(str(graph_file)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    softmax_inputs = [producers[node.input[0]] for node in graph.node if node.op_type == "Softmax"]
    assert softmax_inputs and set(softmax_inputs) <= {"Add", "MatMul"}
    entries = meta["graph"]["onnxruntime_session_config"]
    assert entries == {"session.set_denormal_as_zero": "1"}
    inf = Inferencer(rlr_export, runtime="onnxruntime")
    inf.predict(images(1)[0])
    options = next(iter(inf._runners.values())).session.get_session_options()
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"
    # ...on onnxruntime's own thread: this thread still computes with denormal numbers
    assert (np.array([5e-324]) * 1.0)[0] != 0.0


def test_categories_named_like_no_file_export_under_safe_file_names(extractor, tmp_path) -> None:
    """A per-category run whose category folder was 'metal nut' trained, tested and predicted,
    but its export was refused ('not usable as a file name')."""
    from refad.export.exporter import graph_stems

    assert graph_stems(["fabric", "metal nut", "Fabric", "unit-0"]) == {
        "fabric": "fabric", "metal nut": "unit-1", "Fabric": "unit-2", "unit-0": "unit-3"}
    model = make_model(extractor, "crad")
    calib = {"threshold": 1.0, "map_floor": 0.1, "map_ceiling": 2.0}
    out = tmp_path / "pc"
    export_model(extractor, {"metal nut": model, "screw": model},
                 {"metal nut": calib, "screw": {**calib, "threshold": 2.0}}, {"run": "pc"}, out,
                 "onnx", "fp32", calibration_images=images(2, 1), check_images=images(2))
    assert sorted(p.name for p in out.glob("*.onnx")) == ["screw.onnx", "unit-0.onnx"]
    inferencer = Inferencer(out)
    nut, screw = (inferencer.predict(images(1, 5)[0], category=c) for c in ("metal nut", "screw"))
    assert nut.score == pytest.approx(screw.score, rel=1e-6)  # the same weights in both
    assert (nut.threshold, screw.threshold) == (1.0, 2.0)
    assert nut.threshold_source == "category:metal nut"


def test_int8_is_checked_on_images_it_was_not_calibrated_on(trained_run, monkeypatch) -> None:
    """The parity check of an int8 export ran on a subset of its calibration images, which
    made its figures look better than on new images."""
    from refad.export import from_run

    seen = {}
    monkeypatch.setattr(from_run, "export_model",
                        lambda *args, **kwargs: seen.update(kwargs) or {})
    from_run.export_run(trained_run, trained_run.parent / "never-written", "openvino", "int8",
                        check_count=2, calibration_count=3)
    (check,), (calib,) = seen["check_images"].values(), seen["calibration_images"].values()
    assert len(check) == 2 and len(calib) == 3
    assert not any(np.array_equal(a, b) for a in check for b in calib)
