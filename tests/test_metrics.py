"""refad.metrics against straightforward references (sklearn; a plain AU-PRO written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from refad.errors import ConfigError, DataError
from refad.metrics import (
    METRIC_NAMES,
    MetricAccumulator,
    au_pro,
    auroc,
    average_precision,
    f1_max,
)
from refad.metrics.keys import float32_to_key, key_to_float32
from refad.metrics.regions import region_sizes

TOL = 1e-6
FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- references
def ref_f1max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """sklearn's PR curve; F1max and the lowest threshold reaching it."""
    p, r, t = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * p * r / (p + r))[:-1]
    best = f1.max()
    return float(best), float(t[f1 >= best - 1e-12].min())


def ref_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Obviously-correct AU-PRO: one curve point per distinct score, trapezoids, cut at limit."""
    regions = []
    for i in range(maps.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for th in np.unique(maps)[::-1]:
        fpr.append(np.mean(neg >= th))
        pro.append(np.mean([np.mean(maps[i][r] >= th) for i, r in regions]))
    area = 0.0
    for k in range(1, len(fpr)):
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def feed(acc: MetricAccumulator, maps: np.ndarray, masks: np.ndarray, cuts=()) -> dict:
    """Stream maps into ``acc`` in batches split at ``cuts``; image score = max of the map."""
    edges = [0, *sorted(c for c in cuts if 0 < c < len(maps)), len(maps)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            acc.update(maps[a:b].max(axis=(1, 2)), masks[a:b].any(axis=(1, 2)), maps[a:b],
                       masks[a:b])  # fmt: skip
    return acc.compute()


def check_pixels(res: dict, maps: np.ndarray, masks: np.ndarray) -> None:
    """All pixel metrics of ``res`` against sklearn / the reference AU-PRO (or NaN)."""
    y, s = masks.ravel(), maps.ravel().astype(np.float64)
    if y.all() or not y.any():
        for k in ("p_auroc", "p_ap", "p_f1max", "p_f1_threshold", "au_pro"):
            assert math.isnan(res[k]), k
        return
    assert res["p_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert res["p_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
    f1, thr = ref_f1max(s, y)
    assert res["p_f1max"] == pytest.approx(f1, abs=TOL)
    assert res["p_f1_threshold"] == thr
    assert res["au_pro"] == pytest.approx(ref_au_pro(maps, masks), abs=TOL)


# --------------------------------------------------------------------------- strategies
@st.composite
def pixel_sets(draw) -> tuple[np.ndarray, np.ndarray]:
    b, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):  # heavy ties, negative values and zeros included
        maps = draw(arrays(np.int8, (b, h, w), elements=st.integers(-3, 5))).astype(np.float32) / 4
    else:
        maps = draw(arrays(np.float32, (b, h, w), elements=st.floats(-5, 5, width=32)))
    kind = draw(st.sampled_from(["random", "random", "random", "empty", "full", "single"]))
    if kind == "random":
        masks = draw(arrays(np.bool_, (b, h, w)))
    elif kind == "single":
        masks = np.zeros((b, h, w), dtype=bool)
        masks[tuple(draw(st.integers(0, n - 1)) for n in (b, h, w))] = True
    else:
        masks = np.full((b, h, w), kind == "full")
    return maps, masks


score_sets = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.one_of(
            arrays(np.float64, n, elements=st.integers(0, 4).map(float)),
            arrays(np.float64, n, elements=st.floats(-1e6, 1e6)),
        ),
        arrays(np.bool_, n),
    )
)


# --------------------------------------------------------------------------- keys, regions
@FAST
@given(arrays(np.float32, 30, elements=st.floats(width=32, allow_nan=False)))
def test_keys_preserve_order_and_round_trip(x):
    k = float32_to_key(x)
    assert np.array_equal(np.less.outer(k, k), np.less.outer(x, x))
    assert np.array_equal(np.equal.outer(k, k), np.equal.outer(x, x))
    assert np.array_equal(key_to_float32(k), x + np.float32(0.0))  # -0.0 comes back as +0.0
    assert float32_to_key(np.float32([-0.0]))[0] == float32_to_key(np.float32([0.0]))[0]


def test_regions_are_8_connected_and_per_image():
    m = np.zeros((2, 4, 4), dtype=bool)
    m[0, 0, 0] = m[0, 1, 1] = True  # diagonal neighbours: one region of 2
    m[0, 3, 3] = True  # isolated single pixel
    m[1, 1, 1] = True  # same place in the next image: its own region
    sizes, n = region_sizes(m)
    assert n == 3
    assert sizes.tolist() == [2, 2, 1, 1]


# --------------------------------------------------------------------------- image level
@FAST
@given(score_sets)
def test_image_metrics_match_sklearn(data):
    s, y = data
    if y.all() or not y.any():
        assert math.isnan(auroc(s, y)) and math.isnan(average_precision(s, y))
        assert all(math.isnan(v) for v in f1_max(s, y))
        return
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=TOL)
    f1, thr = ref_f1max(s, y)
    got = f1_max(s, y)
    assert got.f1 == pytest.approx(f1, abs=TOL)
    assert got.threshold == thr


def test_auroc_is_never_flipped():
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([4.0, 3.0, 2.0, 1.0]), y) == 0.0
    assert auroc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5


# --------------------------------------------------------------------------- pixel level
@FAST
@given(pixel_sets(), st.lists(st.integers(1, 3), max_size=3), st.integers(1, 40))
def test_streaming_exact_matches_references(data, cuts, run_size):
    maps, masks = data
    acc = MetricAccumulator(run_size=run_size, group_size=8)  # many runs, every count path
    res = feed(acc, maps, masks, cuts)
    check_pixels(res, maps, masks)
    ys = masks.any(axis=(1, 2))
    if ys.any() and not ys.all():
        assert res["i_auroc"] == pytest.approx(roc_auc_score(ys, maps.max(axis=(1, 2))), abs=TOL)


@FAST
@given(pixel_sets())
def test_plain_au_pro_matches_reference(data):
    maps, masks = data
    got = au_pro(maps, masks)
    if masks.any() and not masks.all():
        assert got == pytest.approx(ref_au_pro(maps, masks), abs=TOL)
    else:
        assert math.isnan(got)


@settings(max_examples=25, deadline=None)
@given(pixel_sets(), st.lists(st.integers(1, 3), max_size=3))
def test_torch_backend_equals_numpy_backend(data, cuts):
    maps, masks = data
    want = feed(MetricAccumulator(run_size=5, group_size=8), maps, masks, cuts)
    acc = MetricAccumulator(device="cpu", run_size=5, group_size=8)
    edges = [0, *sorted(c for c in cuts if 0 < c < len(maps)), len(maps)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            m, g = torch.from_numpy(maps[a:b]), torch.from_numpy(masks[a:b])
            acc.update(m.amax(dim=(1, 2)), g.any(dim=2).any(dim=1), m, g)
    got = acc.compute()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == pytest.approx(v, abs=1e-12), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 32, 32), dtype=np.float32)
    masks = rng.random((6, 32, 32)) > 0.8
    masks[::2] = False  # normal images too, so the image-level metrics are defined
    for mode in ("exact", "binned"):
        want = feed(MetricAccumulator(mode=mode), maps, masks, (2, 4))
        acc = MetricAccumulator(mode=mode, run_size=3000)
        m, g = torch.from_numpy(maps).to("cuda"), torch.from_numpy(masks).to("cuda")
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)  # engines may enable it: must not raise
        try:
            acc.update(m.amax(dim=(1, 2)), g.flatten(1).any(dim=1), m, g)
            got = acc.compute()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12), (mode, k)


@pytest.mark.parametrize(
    ("values", "group_size"),
    [
        (lambda r, n: 1.0 + r.random(n) * 0.03, 50_000),  # dense buckets one by one, per run
        (lambda r, n: 1.0 + r.random(n) * 0.03, 1 << 22),  # dense buckets decoded jointly
        (lambda r, n: 10.0 ** r.uniform(-3, 3, n), 1 << 22),  # sparse over many octaves: sort
    ],
)
def test_exact_store_count_paths_agree_with_sorting(values, group_size):
    rng = np.random.default_rng(0)
    maps = values(rng, 4 * 300 * 300).astype(np.float32).reshape(4, 300, 300)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 100:140, 50:90] = masks[2, 5:7, 5:250] = True
    maps[masks] += np.float32(0.001)
    res = feed(MetricAccumulator(run_size=70_000, group_size=group_size), maps, masks, (1, 2, 3))
    y, s = masks.ravel(), maps.ravel()
    assert res["p_auroc"] == pytest.approx(auroc(s, y), abs=1e-12)
    assert res["p_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert res["p_ap"] == pytest.approx(average_precision(s, y), abs=1e-12)
    assert res["p_f1max"] == pytest.approx(f1_max(s, y).f1, abs=1e-12)
    assert res["au_pro"] == pytest.approx(au_pro(maps, masks), abs=1e-12)


def test_exact_state_is_two_bytes_per_normal_pixel():
    rng = np.random.default_rng(1)
    maps = rng.random((5, 40, 40), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 10:20, 10:20] = True
    acc = MetricAccumulator(run_size=3000)
    feed(acc, maps, masks, (1, 2, 3, 4))  # compute() flushes the staged keys into runs
    n_neg, n_pos = int((~masks).sum()), int(masks.sum())
    n_runs = len(acc._store._runs)
    assert acc.state_bytes == 2 * n_neg + 8 * (1 << 16) * n_runs + 8 * n_pos + 9 * 5 + 8 * n_runs


def test_perfect_map_scores_one_and_fpr_limit_is_honoured():
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = masks[1, 9, 9] = True
    maps = np.where(masks, 2.0, 1.0).astype(np.float32)
    res = feed(MetricAccumulator(), maps, masks)
    assert res["au_pro"] == 1.0 and res["p_auroc"] == 1.0 and res["p_f1max"] == 1.0
    noisy = maps + np.random.default_rng(0).random(maps.shape).astype(np.float32)
    for limit in (0.05, 0.3, 1.0):
        got = feed(MetricAccumulator(fpr_limit=limit), noisy, masks)["au_pro"]
        assert got == pytest.approx(ref_au_pro(noisy, masks, limit), abs=TOL)


# --------------------------------------------------------------------------- binned mode
@FAST
@given(pixel_sets())
def test_binned_is_exact_on_values_that_fit_its_bins(data):
    maps, masks = data  # quarter steps need few mantissa bits: 2**16 bins hold them exactly
    maps = np.round(maps * 4) / 4
    exact = feed(MetricAccumulator(), maps, masks)
    binned = feed(MetricAccumulator(mode="binned", bins=1 << 16, run_size=7), maps, masks)
    thr_e, thr_b = exact.pop("p_f1_threshold"), binned.pop("p_f1_threshold")
    for k, v in exact.items():
        assert (math.isnan(v) and math.isnan(binned[k])) or binned[k] == pytest.approx(v), k
    if not math.isnan(thr_e):  # binned reports its bin's lower edge: same bin as the exact one
        assert thr_b <= thr_e
        same_bin = float32_to_key(np.float32([thr_b, thr_e])) >> 16
        assert same_bin[0] == same_bin[1]


def test_binned_equals_exact_on_floored_scores():
    rng = np.random.default_rng(2)
    maps = rng.random((4, 50, 50), dtype=np.float32) * 3
    masks = rng.random(maps.shape) > 0.9
    bins = 1 << 12
    shift = 32 - 12
    floored = key_to_float32((float32_to_key(maps) >> shift) << shift)
    binned = feed(MetricAccumulator(mode="binned", bins=bins), maps, masks)
    exact = feed(MetricAccumulator(), floored, masks)
    for k in ("p_auroc", "p_ap", "p_f1max", "p_f1_threshold", "au_pro"):
        assert binned[k] == pytest.approx(exact[k], abs=1e-12), k
    assert binned["p_auroc"] != feed(MetricAccumulator(), maps, masks)["p_auroc"]


# --------------------------------------------------------------------------- accumulator API
def small_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four random 8x8 maps; images 1 and 3 normal, so image-level metrics are defined."""
    rng = np.random.default_rng(seed)
    maps = rng.random((4, 8, 8), dtype=np.float32)
    masks = rng.random(maps.shape) > 0.7
    masks[1::2] = False
    return maps, masks


def test_result_keys_and_ranges():
    maps, masks = small_case(4)
    res = feed(MetricAccumulator(), maps, masks)
    assert METRIC_NAMES == ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")
    assert set(res) == {*METRIC_NAMES, "i_f1_threshold", "p_f1_threshold"}
    assert all(0.0 <= res[k] <= 1.0 for k in METRIC_NAMES)


def test_input_forms_compute_again_and_reset():
    maps, masks = small_case(5)
    want = feed(MetricAccumulator(), maps, masks)
    acc = MetricAccumulator()
    labels = masks.any(axis=(1, 2)).astype(np.int64)
    acc.update(maps[:2].max(axis=(1, 2)), labels[:2], maps[:2, None], masks[:2, None] * 255.0)
    first = acc.compute()
    assert acc.compute() == first  # compute() does not consume the state
    m3, g3 = torch.from_numpy(maps[2:3]), torch.from_numpy(masks[2:3])  # CPU tensors, zero-copy
    acc.update(m3.amax(dim=(1, 2)), torch.from_numpy(labels[2:3]), m3, g3)
    acc.update(list(maps[3:].max(axis=(1, 2))), labels[3:].tolist(), maps[3:], masks[3:] * 0.9)
    assert acc.compute() == want
    acc.reset()
    assert acc.num_images == 0 and all(math.isnan(v) for v in acc.compute().values())


def test_image_only_accumulator_leaves_pixel_metrics_nan():
    acc = MetricAccumulator()
    acc.update(np.array([0.1, 0.9, 0.4]), np.array([0, 1, 1]))
    res = acc.compute()
    assert res["i_auroc"] == 1.0 and math.isnan(res["p_auroc"]) and math.isnan(res["au_pro"])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "fast"}, ConfigError),
        ({"mode": "binned", "bins": 1000}, ConfigError),
        ({"bins": 1 << 30}, ConfigError),
        ({"fpr_limit": 0.0}, ConfigError),
    ],
)
def test_bad_configuration_is_reported(kwargs, error):
    with pytest.raises(error):
        MetricAccumulator(**kwargs)


def test_bad_inputs_are_reported():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    masks = np.zeros((2, 4, 4), dtype=bool)
    s, y = np.zeros(2), np.array([0, 1])
    acc = MetricAccumulator()
    with pytest.raises(DataError, match="NaN"):
        acc.update(s, y, np.full((2, 4, 4), np.nan, dtype=np.float32), masks)
    with pytest.raises(DataError, match="labels"):
        acc.update(s, np.array([0, 2]), maps, masks)
    with pytest.raises(DataError):
        acc.update(s, y, maps, masks[:, :3])
    with pytest.raises(DataError):
        acc.update(np.zeros(3), np.zeros(3), maps, masks)
    with pytest.raises(DataError, match="together"):
        acc.update(s, y, maps, None)
    acc.update(s, y, maps, masks)
    with pytest.raises(DataError, match="others not"):
        acc.update(s, y)
    with pytest.raises(DataError, match="differs"):
        acc.update(s, y, np.zeros((2, 5, 5), np.float32), np.zeros((2, 5, 5), bool))
