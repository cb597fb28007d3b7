"""Synthetic multi-category "products" with exact defect masks, for the demo and the test suite.

Each category renders a defect-free picture from one random stream; a defect is then painted from a
second, independent stream. So the same seed gives the same clean picture with or without a defect,
and the ground-truth mask is exactly the set of pixels the defect changed (compared after the
8-bit quantisation). Defects cover roughly 0.2-5% of the image and differ from the product by tens
of grey levels, so they are visible without being trivial.

Categories (``SYNTHETIC_CATEGORIES``):

* ``fabric``  - woven texture; defects ``hole`` (missing patch), ``scratch`` (bright pulled
  thread), ``stain`` (brown blot).
* ``screw``   - a screw on a plate with position/rotation jitter; ``missing`` (bite out of the
  outline), ``scratch`` (dark line along the body), ``spot`` (rust).
* ``mesh``    - backlit wire grid; ``broken`` (wire piece missing), ``stain`` (oil blot),
  ``thread`` (red fibre lying across).
* ``washer``  - brass ring with a hole; ``crack``, ``notch`` (bite out of a rim), ``spot``.
* ``wafer``   - a high-resolution category: a fine grid of dies with copper traces, meant to be
  rendered at 1024 px or more, where its defects are 10-30 px: ``particle`` (dark speck),
  ``scratch`` (short thin line), ``void`` (a trace or die piece missing). Resized to 256 px a
  defect shrinks to a few pixels inside a texture of the same period; at full resolution (tiles)
  it stays visible. Not in the default demo (`refad demo --hires` renders it).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from refad.atomic import atomic_folder
from refad.errors import ConfigError, DataError

_MARKER = ".refad-demo.json"
_SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2}


@dataclass(frozen=True)
class _Scene:
    """A rendered defect-free product and what defects need to know about it."""

    image: np.ndarray  # (S, S, 3) float32 in [0, 1]
    under: np.ndarray  # (S, S, 3) float32: what shows where material is missing
    support: np.ndarray  # (S, S) bool: the product's pixels
    axis: float | None  # main direction of the product (radians), None for textures


@dataclass(frozen=True)
class _Defect:
    """How one defect type is drawn; sizes are fractions of the image side."""

    kind: str  # "line", "blob" or "missing"
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    alpha: tuple[float, float] = (0.7, 0.9)
    radius: tuple[float, float] = (0.04, 0.07)  # blob / missing
    length: tuple[float, float] = (0.3, 0.5)  # line
    width: float = 1 / 80  # line
    spread: float = np.pi  # line direction spread around the product axis
    anywhere: bool = False  # False: clipped to the product's pixels
    at_edge: bool = False  # centre on the product's outline (bites, notches)
    min_frac: float = 0.002
    max_frac: float = 0.05


@dataclass(frozen=True)
class _Category:
    render: Callable[[np.random.Generator, int], _Scene]
    defects: dict[str, _Defect]


# ----------------------------------------------------------------------------- noise and shapes


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")  # (y, x)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with features about size/cells pixels wide."""
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    smooth = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32)


def _fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    return rng.standard_normal((size, size), dtype=np.float32) * np.float32(sigma)


def _rotate(y: np.ndarray, x: np.ndarray, cy: float, cx: float, angle: float):
    """Coordinates (u along ``angle``, v across) of every pixel around the centre (cy, cx)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return dx * c + dy * s, -dx * s + dy * c


def _blob(rng: np.random.Generator, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Irregular round region: a circle whose radius wobbles with a few angular harmonics."""
    y, x = _grid(size)
    dy, dx = y - cy, x - cx
    phi = np.arctan2(dy, dx)
    r = np.full_like(phi, radius)
    for k in (2, 3, 5):
        r += radius * rng.uniform(0.03, 0.15) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return dx * dx + dy * dy <= r * r


def _polyline(
    size: int, points: np.ndarray, width: float
) -> np.ndarray:
    """Pixels within width/2 of a polyline given as (N, 2) (y, x) points."""
    y, x = _grid(size)
    best = np.full((size, size), np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:], strict=True):
        vy, vx = y1 - y0, x1 - x0
        length2 = max(vy * vy + vx * vx, 1e-9)
        t = np.clip(((y - y0) * vy + (x - x0) * vx) / length2, 0.0, 1.0)
        d2 = (y - y0 - t * vy) ** 2 + (x - x0 - t * vx) ** 2
        np.minimum(best, d2, out=best)
    return best <= (width / 2) ** 2


# ----------------------------------------------------------------------------- categories


def _render_fabric(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    base = np.array([0.52, 0.46, 0.36], np.float32) + rng.normal(0, 0.012, 3).astype(np.float32)
    period = size / rng.uniform(13.0, 15.0)
    u, v = _rotate(y, x, 0.0, 0.0, rng.normal(0, 0.03))
    u = u * (2 * np.pi / period) + rng.uniform(0, 4 * np.pi)
    v = v * (2 * np.pi / period) + rng.uniform(0, 4 * np.pi)
    over = np.sin(u / 2) * np.sin(v / 2) > 0  # plain weave: warp and weft alternate on top
    weave = np.where(over, np.cos(v) ** 2, np.cos(u) ** 2)
    shade = 0.78 + 0.28 * weave + 0.035 * _smooth_noise(rng, size, 6)
    shade = shade + _fine_noise(rng, size, 0.015)
    image = base * shade[..., None] * rng.uniform(0.97, 1.03)
    under = 0.06 + _fine_noise(rng, size, 0.01)[..., None] + np.zeros(3, np.float32)
    return _Scene(image, under, np.ones((size, size), bool), None)


def _plate(rng: np.random.Generator, size: int, colour: Sequence[float]) -> np.ndarray:
    """A matte background with a gentle light gradient and sensor noise."""
    y, x = _grid(size)
    tilt = rng.uniform(-0.04, 0.04, 2)
    light = 1.0 + tilt[0] * (y / size - 0.5) + tilt[1] * (x / size - 0.5)
    light = light + 0.03 * _smooth_noise(rng, size, 4) + _fine_noise(rng, size, 0.012)
    return np.asarray(colour, np.float32) * light[..., None]


def _render_screw(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    background = _plate(rng, size, (0.16, 0.17, 0.19))
    cy, cx = size * (0.5 + rng.normal(0, 0.025, 2))
    angle = rng.uniform(-0.15, 0.15)
    u, v = _rotate(y, x, cy, cx, angle)
    u, v = u / size, v / size
    pitch = 0.036
    half = 0.05 * (1 + 0.14 * np.abs(np.sin(np.pi * u / pitch)))  # serrated thread outline
    half = half * np.clip((0.31 - u) / 0.07, 0.0, 1.0)  # pointed tip
    shaft = (u >= -0.22) & (u <= 0.31) & (np.abs(v) <= half)
    head = ((u + 0.26) / 0.045) ** 4 + (v / 0.11) ** 4 <= 1.0
    body = shaft | head
    across = np.clip(np.abs(v) / np.where(head, 0.11, np.maximum(half, 1e-6)), 0.0, 1.0)
    shade = 0.5 + 0.38 * np.sqrt(1.0 - across**2)  # cylinder-like highlight along the axis
    shade = shade + np.where(shaft & ~head, 0.08 * np.sin(2 * np.pi * u / pitch), 0.0)
    shade = shade + _fine_noise(rng, size, 0.012)
    steel = np.array([0.80, 0.82, 0.86], np.float32) * rng.uniform(0.97, 1.03)
    image = np.where(body[..., None], steel * shade[..., None], background)
    return _Scene(image.astype(np.float32), background, body, float(angle))


def _render_mesh(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    background = _plate(rng, size, (0.84, 0.85, 0.87))
    period = size / rng.uniform(8.5, 9.5)
    u, v = _rotate(y, x, 0.0, 0.0, rng.normal(0, 0.02))
    du = np.abs(np.mod(u + rng.uniform(0, period), period) - period / 2)
    dv = np.abs(np.mod(v + rng.uniform(0, period), period) - period / 2)
    half = max(0.018 * size, 1.0)
    dist = np.minimum(du, dv)
    cover = np.clip(half + 0.5 - dist, 0.0, 1.0)[..., None]  # 1-pixel anti-aliased wire edges
    shade = 0.75 + 0.5 * (1.0 - np.clip(dist / half, 0, 1) ** 2) + _fine_noise(rng, size, 0.02)
    metal = np.array([0.26, 0.25, 0.23], np.float32) * shade[..., None]
    image = background * (1.0 - cover) + metal * cover
    return _Scene(image.astype(np.float32), background, cover[..., 0] > 0, None)


def _render_washer(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    background = _plate(rng, size, (0.20, 0.25, 0.22))
    cy, cx = size * (0.5 + rng.normal(0, 0.025, 2))
    r = np.hypot(y - cy, x - cx) / size
    theta = np.arctan2(y - cy, x - cx)
    outer = 0.3 * rng.uniform(0.97, 1.03)
    ring = (r <= outer) & (r >= 0.11)
    light = rng.uniform(0, 2 * np.pi)
    shade = 0.62 + 0.18 * np.cos(theta - light) + 0.04 * np.sin(60 * theta + 9 * r)
    shade = shade + _fine_noise(rng, size, 0.012)
    brass = np.array([0.82, 0.68, 0.40], np.float32)
    image = np.where(ring[..., None], brass * shade[..., None], background)
    return _Scene(image.astype(np.float32), background, ring, None)


def _render_wafer(rng: np.random.Generator, size: int) -> _Scene:
    """Dies on a 32-per-side grid (1024 px: 32 px dies) with two traces each way, so the
    texture's period is about a defect's size."""
    y, x = _grid(size)
    period = size / rng.uniform(31.0, 33.0)
    u, v = _rotate(y, x, 0.0, 0.0, rng.normal(0, 0.004))
    fu = np.mod(u + rng.uniform(0, period), period) / period
    fv = np.mod(v + rng.uniform(0, period), period) / period
    street = (np.minimum(fu, 1 - fu) < 0.06) | (np.minimum(fv, 1 - fv) < 0.06)
    traces = (np.abs(fu - 0.35) < 0.04) | (np.abs(fu - 0.65) < 0.04)
    traces |= (np.abs(fv - 0.35) < 0.04) | (np.abs(fv - 0.65) < 0.04)
    die = np.array([0.30, 0.36, 0.48], np.float32) * rng.uniform(0.97, 1.03)
    copper = np.array([0.78, 0.55, 0.32], np.float32)
    silicon = np.array([0.58, 0.60, 0.64], np.float32)
    image = np.where(traces[..., None], copper, die)
    image = np.where(street[..., None], silicon, image)
    light = 1.0 + 0.03 * _smooth_noise(rng, size, 5) + _fine_noise(rng, size, 0.015)
    image = image * light[..., None]
    substrate = np.array([0.11, 0.10, 0.12], np.float32)  # where a void opens the die
    under = substrate * (1.0 + _fine_noise(rng, size, 0.05))[..., None]
    return _Scene(image.astype(np.float32), under.astype(np.float32),
                  np.ones((size, size), bool), None)


_CATEGORIES: dict[str, _Category] = {
    "fabric": _Category(
        _render_fabric,
        {
            "hole": _Defect("missing", radius=(0.045, 0.075), min_frac=0.005),
            "scratch": _Defect("line", colour=(0.95, 0.94, 0.9), alpha=(0.8, 0.95)),
            "stain": _Defect("blob", colour=(0.22, 0.1, 0.04), alpha=(0.55, 0.8)),
        },
    ),
    "screw": _Category(
        _render_screw,
        {
            "missing": _Defect("missing", radius=(0.045, 0.065), at_edge=True, min_frac=0.003),
            "scratch": _Defect(
                "line", colour=(0.12, 0.11, 0.1), length=(0.25, 0.4), spread=0.15, min_frac=0.0015
            ),
            "spot": _Defect("blob", colour=(0.55, 0.22, 0.05), radius=(0.035, 0.05)),
        },
    ),
    "mesh": _Category(
        _render_mesh,
        {
            "broken": _Defect("missing", radius=(0.05, 0.07), min_frac=0.003),
            "stain": _Defect("blob", colour=(0.5, 0.4, 0.1), anywhere=True, alpha=(0.55, 0.8)),
            "thread": _Defect("line", colour=(0.8, 0.08, 0.08), anywhere=True),
        },
    ),
    "washer": _Category(
        _render_washer,
        {
            "crack": _Defect("line", colour=(0.1, 0.07, 0.04), length=(0.2, 0.35)),
            "notch": _Defect("missing", radius=(0.04, 0.06), at_edge=True, min_frac=0.003),
            "spot": _Defect("blob", colour=(0.15, 0.2, 0.1), radius=(0.035, 0.055)),
        },
    ),
    "wafer": _Category(
        _render_wafer,
        {
            "particle": _Defect("blob", colour=(0.08, 0.08, 0.09), radius=(0.005, 0.014),
                                alpha=(0.6, 0.85), anywhere=True, min_frac=5e-5, max_frac=1e-3),
            "scratch": _Defect("line", colour=(0.9, 0.9, 0.92), length=(0.012, 0.03),
                               width=2 / 1024, alpha=(0.6, 0.8), anywhere=True, min_frac=1e-5,
                               max_frac=1e-3),
            "void": _Defect("missing", radius=(0.005, 0.012), anywhere=True, min_frac=5e-5,
                            max_frac=1e-3),
        },
    ),
}

SYNTHETIC_CATEGORIES: tuple[str, ...] = tuple(sorted(_CATEGORIES))
DEFAULT_CATEGORIES: tuple[str, ...] = ("fabric", "mesh", "screw")


def defect_types(category: str) -> tuple[str, ...]:
    """Sorted defect names of a synthetic category."""
    return tuple(sorted(_category(category).defects))


def _category(name: str) -> _Category:
    if name not in _CATEGORIES:
        raise ConfigError(
            f"categories: unknown synthetic category {name!r}; "
            f"available: {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    return _CATEGORIES[name]


# ----------------------------------------------------------------------------- defects


def _centre(rng: np.random.Generator, scene: _Scene, spec: _Defect, size: int) -> np.ndarray:
    """A random (y, x) centre away from the border, on the product (or its outline) if required."""
    margin = int(round(0.12 * size))
    allowed = np.zeros((size, size), bool)
    allowed[margin : size - margin, margin : size - margin] = True
    if not spec.anywhere:
        region = scene.support
        if spec.at_edge:
            region = region & ~ndimage.binary_erosion(region)
        allowed &= region
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        candidates = np.arange(size * size)
    flat = candidates[rng.integers(candidates.size)]
    return np.array(divmod(int(flat), size), np.float32) + 0.5


def _defect_region(
    rng: np.random.Generator, scene: _Scene, spec: _Defect, size: int
) -> np.ndarray:
    centre = _centre(rng, scene, spec, size)
    if spec.kind == "line":
        base = scene.axis if scene.axis is not None else rng.uniform(0, np.pi)
        heading = base + rng.uniform(-spec.spread, spec.spread)
        step = rng.uniform(*spec.length) * size / 3
        points = [centre]
        for _ in range(3):
            heading += rng.normal(0, 0.2)
            points.append(points[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
        pts = np.array(points) - (np.array(points[-1]) - centre) / 2  # centre the line
        region = _polyline(size, pts, max(1.2, spec.width * size))
    else:
        region = _blob(rng, size, centre[0], centre[1], rng.uniform(*spec.radius) * size)
    if not spec.anywhere:
        region &= scene.support
    return region


def _paint(
    rng: np.random.Generator, scene: _Scene, spec: _Defect, region: np.ndarray, size: int
) -> np.ndarray:
    if spec.kind == "missing":
        return np.where(region[..., None], scene.under, scene.image)
    alpha = rng.uniform(*spec.alpha) * (1.0 + 0.1 * _smooth_noise(rng, size, 12))
    alpha = np.clip(alpha, 0.3, 1.0)[..., None]
    colour = np.asarray(spec.colour, np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    painted = scene.image * (1 - alpha) + colour * alpha
    return np.where(region[..., None], painted, scene.image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _seed_entropy(seed: int | Sequence[int]) -> list[int]:
    values = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not values or any(isinstance(v, bool) or int(v) != v or v < 0 for v in values):
        raise ConfigError(f"seed: must be a non-negative integer (or a sequence), got {seed!r}")
    return [int(v) for v in values]


def render_sample(
    category: str, size: int, seed: int | Sequence[int], defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic picture: ((S, S, 3) uint8 RGB, (S, S) bool mask of the changed pixels).

    The clean picture depends only on (category, size, seed); ``defect`` paints on top of it from
    an independent stream, so ``render_sample(c, s, k, None)`` is the defect-free twin of
    ``render_sample(c, s, k, "scratch")`` and the mask is exactly where the two differ.
    """
    cat = _category(category)
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ConfigError(f"size: must be an integer >= 32, got {size!r}")
    entropy = _seed_entropy(seed)
    scene = cat.render(np.random.default_rng([*entropy, 0]), size)
    clean = _to_uint8(scene.image)
    if defect is None:
        return clean, np.zeros((size, size), bool)
    if defect not in cat.defects:
        raise ConfigError(
            f"defect: unknown {category} defect {defect!r}; "
            f"available: {', '.join(defect_types(category))}"
        )
    spec = cat.defects[defect]
    rng = np.random.default_rng([*entropy, 1])
    for _ in range(30):  # redraw the rare placements that come out too small or too large
        region = _defect_region(rng, scene, spec, size)
        frac = float(region.mean())
        if spec.min_frac <= frac <= spec.max_frac:
            break
    damaged = _to_uint8(_paint(rng, scene, spec, region, size))
    mask = np.any(damaged != clean, axis=2)
    if not mask.any():  # never seen over thousands of seeds; a labelled defect must show
        raise RuntimeError(f"synthetic {category}/{defect} left no mark for seed {entropy}")
    return damaged, mask


# ----------------------------------------------------------------------------- dataset on disk


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _check_root(root: Path) -> None:
    """Refuse to replace anything but a previous demo dataset (or an empty folder)."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / _MARKER).is_file():
        raise DataError(f"{root}: folder is not empty and is not a refad demo dataset")


def make_demo_dataset(
    root: Path,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    n_train: int = 24,
    n_test_good: int = 8,
    n_test_defect: int = 8,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in MVTec-AD layout under ``root`` and return ``root``.

    Per category: ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` with
    ``ground_truth/<defect>/NNN_mask.png`` (0/255); the defect types take turns. Deterministic in
    ``seed``. Re-running over a previous demo folder replaces it; any other non-empty folder is
    refused. The dataset is built beside ``root`` and moved into place complete, so an
    interrupted run never leaves a partial dataset that a later run would train on. The
    defaults make a CPU demo that trains in a couple of minutes.
    """
    root = Path(root)
    names = list(dict.fromkeys([categories] if isinstance(categories, str) else categories))
    if not names:
        raise ConfigError("categories: need at least one synthetic category")
    for name in names:
        _category(name)
    for field, value, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_defect", n_test_defect, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{field}: must be an integer >= {low}, got {value!r}")
    seed_values = _seed_entropy(seed)
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ConfigError(f"size: must be an integer >= 32, got {size!r}")

    _check_root(root)
    with atomic_folder(root, replace=True) as building:  # only a demo dataset (_check_root)
        _write_dataset(building, names, n_train, n_test_good, n_test_defect, size, seed_values)
    return root


def _write_dataset(
    root: Path, names: list[str], n_train: int, n_test_good: int, n_test_defect: int,
    size: int, seed_values: list[int],
) -> None:
    for name in names:
        key = zlib.crc32(name.encode())
        cat_dir = root / name

        def entropy(split: str, index: int, key: int = key) -> list[int]:
            return [*seed_values, key, _SPLIT_CODES[split], index]

        for i in range(n_train):
            image, _ = render_sample(name, size, entropy("train", i))
            _save_png(image, cat_dir / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            image, _ = render_sample(name, size, entropy("test_good", i))
            _save_png(image, cat_dir / "test" / "good" / f"{i:03d}.png")
        kinds = defect_types(name)
        for i in range(n_test_defect):
            defect, number = kinds[i % len(kinds)], i // len(kinds)
            image, mask = render_sample(name, size, entropy("test_defect", i), defect)
            _save_png(image, cat_dir / "test" / defect / f"{number:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, cat_dir / "ground_truth" / defect /
                      f"{number:03d}_mask.png")
    marker_data = {
        "generator": "refad.data.synthetic",
        "categories": names,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "size": size,
        "seed": seed_values if len(seed_values) > 1 else seed_values[0],
    }
    (root / _MARKER).write_text(json.dumps(marker_data, indent=1) + "\n")
