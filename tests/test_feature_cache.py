"""Computing backbone features over a dataset, and caching them in memory or on disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.utils.data import Dataset

from refad.backbones import FeatureCache, FeatureExtractor, compute_features, feature_cache_key
from refad.backbones import cache as cache_module
from refad.errors import DataError, RefadError


class ToyImages(Dataset):
    """Items shaped like the project's datasets: a normalised image plus fields we must ignore."""

    def __init__(self, n: int, size: int = 64, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": i % 2, "mask": None, "path": f"img{i}.png"}


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", levels=(1, 2), weights=None)


class Counter:
    """compute_fn that records how often it ran and returns fixed random levels."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.result = [
            torch.randn(3, 4, 8, 8, generator=gen),
            torch.randn(3, 6, 4, 4, generator=gen),
        ]
        self.calls = 0

    def __call__(self) -> list[torch.Tensor]:
        self.calls += 1
        return [t.clone() for t in self.result]


def _never() -> list[torch.Tensor]:
    raise AssertionError("compute_fn must not run on a cache hit")


def _key(**changes: object) -> dict:
    key = {
        "format": cache_module.CACHE_FORMAT,
        "dataset": "toy-v1",
        "backbone": "tf_efficientnet_lite0",
        "weights_id": "random-seed-0",
        "levels": [1, 2],
        "aggregate_kernel": 3,
        "image_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    key.update(changes)
    return key


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- compute_features


def test_compute_features_matches_one_big_batch(extractor: FeatureExtractor) -> None:
    data = ToyImages(5)
    feats = compute_features(
        extractor, data, batch_size=2, device=torch.device("cpu"), progress=False
    )
    expected = extractor(data.images)
    assert [tuple(f.shape) for f in feats] == [(5, 24, 16, 16), (5, 40, 8, 8)]
    for got, want in zip(feats, expected, strict=True):
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert torch.allclose(got, want, atol=1e-5)


def test_compute_features_refuses_empty_dataset_and_device_mismatch(
    extractor: FeatureExtractor,
) -> None:
    with pytest.raises(DataError, match="dataset"):
        compute_features(extractor, ToyImages(0), 2, torch.device("cpu"), progress=False)
    with pytest.raises(ValueError, match="extractor is on cpu"):
        compute_features(extractor, ToyImages(2), 2, torch.device("meta"), progress=False)


def test_feature_cache_key_names_everything_that_changes_features(
    extractor: FeatureExtractor,
) -> None:
    key = feature_cache_key(extractor, "toy-v1", 64)
    assert key == _key()
    other = FeatureExtractor("tf_efficientnet_lite0", levels=(1, 2), weights=None, seed=5)
    assert feature_cache_key(other, "toy-v1", 64)["weights_id"] == "random-seed-5"
    assert feature_cache_key(extractor, "toy-v1", 64, dtype="float32")["dtype"] == "float32"
    # (height, width) and the resize rule: a square "stretch" key is the one written before
    # both existed (its caches stay valid); another size or rule is another entry
    assert feature_cache_key(extractor, "toy-v1", (64, 64), "stretch") == _key()
    assert feature_cache_key(extractor, "toy-v1", [48, 96]) == _key(image_size=[48, 96])
    assert feature_cache_key(extractor, "toy-v1", 64, "pad") == _key(resize="pad")


# --------------------------------------------------------------------------------- FeatureCache


def test_memory_cache_computes_once() -> None:
    cache = FeatureCache(None)
    compute = Counter()
    first = cache.get_or_compute(_key(), compute)
    second = cache.get_or_compute(_key(), _never)
    assert compute.calls == 1
    assert all(a is b for a, b in zip(first, second, strict=True))
    cache.get_or_compute(_key(image_size=32), compute)
    assert compute.calls == 2


def test_disk_cache_hit_returns_identical_tensors(tmp_path: Path) -> None:
    compute = Counter()
    first = FeatureCache(tmp_path).get_or_compute(_key(), compute)
    path = FeatureCache(tmp_path).path_for(_key())
    assert _entries(tmp_path) == [path.name]
    again = FeatureCache(tmp_path).get_or_compute(_key(), _never)  # fresh instance: from disk
    assert compute.calls == 1
    for a, b, c in zip(first, again, compute.result, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize(
    "change",
    [
        {"dataset": "toy-v2"},
        {"backbone": "tf_efficientnet_lite2"},
        {"weights_id": "random-seed-1"},
        {"levels": [1, 2, 3]},
        {"aggregate_kernel": 1},
        {"image_size": 128},
        {"mean": [0.485, 0.456, 0.406]},
        {"std": [0.229, 0.224, 0.225]},
        {"format": "refad-features-0"},
    ],
)
def test_changing_any_key_part_recomputes(tmp_path: Path, change: dict) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(_key(), Counter(0))
    changed = Counter(1)
    got = cache.get_or_compute(_key(**change), changed)
    assert changed.calls == 1
    assert torch.equal(got[0], changed.result[0])
    assert len(_entries(tmp_path)) == 2
    assert torch.equal(cache.get_or_compute(_key(), _never)[0], Counter(0).result[0])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00" * 64)


def _foreign_key(path: Path) -> None:
    safetensors.torch.save_file(
        {"level_0": torch.zeros(3, 4, 8, 8)},
        str(path),
        metadata={"format": cache_module.CACHE_FORMAT, "key": "{}", "shapes": "[[3,4,8,8]]"},
    )


def _wrong_shapes(path: Path) -> None:
    key = cache_module._key_json(_key())
    safetensors.torch.save_file(
        {"level_0": torch.zeros(3, 4, 8, 8)},
        str(path),
        metadata={"format": cache_module.CACHE_FORMAT, "key": key, "shapes": "[[3,4,4,4]]"},
    )


@pytest.mark.parametrize("damage", [_truncate, _garbage, _foreign_key, _wrong_shapes])
def test_damaged_entry_is_recomputed_with_a_warning(tmp_path: Path, damage) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(_key(), Counter())
    path = cache.path_for(_key())
    damage(path)
    compute = Counter()
    with pytest.warns(RuntimeWarning, match="recomputing"):
        got = cache.get_or_compute(_key(), compute)
    assert compute.calls == 1 and torch.equal(got[1], compute.result[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is healthy again
        healed = FeatureCache(tmp_path).get_or_compute(_key(), _never)
    assert torch.equal(healed[1], compute.result[1])


def test_failed_compute_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> list[torch.Tensor]:
        raise RuntimeError("backbone crashed")

    with pytest.raises(RuntimeError, match="backbone crashed"):
        FeatureCache(tmp_path / "cache").get_or_compute(_key(), broken)
    cache_dir = tmp_path / "cache"
    assert not cache_dir.exists() or _entries(cache_dir) == []


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.safetensors.torch, "save_file", half_write)
    with pytest.raises(RefadError, match="cannot write .disk full"):  # one line, names the file
        FeatureCache(tmp_path).get_or_compute(_key(), Counter())
    assert _entries(tmp_path) == []


def test_compute_fn_must_return_feature_levels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compute_fn"):
        FeatureCache(tmp_path).get_or_compute(_key(), lambda: [torch.zeros(3, 4)])
    assert _entries(tmp_path) == []


def test_cache_round_trip_with_real_features(tmp_path: Path, extractor: FeatureExtractor) -> None:
    data = ToyImages(3)
    key = feature_cache_key(extractor, "toy-v1", 64)
    cpu = torch.device("cpu")

    def compute() -> list[torch.Tensor]:
        return compute_features(extractor, data, batch_size=2, device=cpu, progress=False)

    first = FeatureCache(tmp_path).get_or_compute(key, compute)
    second = FeatureCache(tmp_path).get_or_compute(key, _never)
    assert [f.shape[1] for f in second] == extractor.channels
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_training_keys_features_by_their_batch_and_device(demo_root: Path) -> None:
    """Features computed at feature-batch 5 differ from those at 16 in their last bits: a run
    reading a cache written at another batch (or on another device) was not the run it would
    have been uncached."""
    from conftest import tiny_config

    from refad.backbones import build_extractor
    from refad.data import load_split
    from refad.training import extract_features

    keys: list[dict] = []

    class Recorder:
        def get_or_compute(self, key, compute):
            keys.append(key)
            return []

    for batch in (5, 16):
        config = tiny_config(demo_root, f"train.feature_batch_size={batch}")
        extractor = build_extractor(config.backbone, "cpu")
        samples = load_split(config.data, "train")
        extract_features(extractor, samples, config, torch.device("cpu"), Recorder(), False)
    assert [k["feature_batch_size"] for k in keys] == [5, 16]
    assert {k["device"] for k in keys} == {"cpu"}
