"""Real-IAD layout (Wang et al., CVPR 2024): 30 objects, five camera views per sample.

    ROOT/realiad_<resolution>/OBJECT/OK/S0001/OBJECT_0001_OK_C1_<time>.jpg     normal views
    ROOT/realiad_<resolution>/OBJECT/NG/<defect>/S0025/OBJECT_0025_NG_C3_<time>.jpg (+ .png mask)
    ROOT/realiad_jsons/realiad_jsons/OBJECT.json                              the split file

A split file is a JSON object with `meta` (`normal_class`, "OK") and the lists `train` and
`test`, one entry per image: `image_path` and `mask_path` (relative to the object's folder;
`mask_path` null for normal views), `anomaly_class` ("OK", or the defect's code) and
`category`. The files say which images are in which split, so refad reads them rather than
the folders. `resolution` picks the image folder (`realiad_1024`, the default, `_512`,
`_256`, `_raw`); the masks are those stored beside the images.

A sample is one folder (`S0025`) holding views C1..C5 of one part; with `complete_views`
(default) a sample that lacks a view, or lists one twice, is refused, naming the sample.
Per-sample results take the maximum over views (`refad.inference.multiview`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from refad.data.images import check_regular_file
from refad.data.samples import Sample, check_split, select_categories
from refad.errors import DataError

VIEWS = ("C1", "C2", "C3", "C4", "C5")
NORMAL_CLASS = "OK"
_VIEW = re.compile(r"_(C\d+)_")


def json_folder(root: Path, json_dir: str | Path | None) -> Path:
    """The folder of the split files: `json_dir` when given, else the release's
    ROOT/realiad_jsons/realiad_jsons (or ROOT/realiad_jsons when it holds them directly)."""
    if json_dir is not None:
        folder = Path(json_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder}: data.json_dir not found")
        return folder
    base = Path(root) / "realiad_jsons"
    for folder in (base / "realiad_jsons", base):
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder
    raise DataError(f"{base / 'realiad_jsons'}: no Real-IAD split files (OBJECT.json) found; "
                    "set data.json_dir to their folder")


def list_real_iad_objects(json_dir: Path) -> list[str]:
    """The objects that have a split file, sorted."""
    return sorted(p.stem for p in Path(json_dir).glob("*.json") if not p.name.startswith("."))


def view_of(image: Path | str) -> str:
    """The camera view (C1..C5) in a Real-IAD file name; DataError when there is none."""
    found = _VIEW.search(PurePosixPath(str(image)).name)
    if found is None:
        raise DataError(f"{image}: no camera view (_C1_ .. _C5_) in the file name")
    return found.group(1)


def _read_split_file(path: Path, split: str) -> tuple[str, list[Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split file ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(split), list):
        raise DataError(f"{path}: no '{split}' list (a Real-IAD split file holds 'meta', "
                        "'train' and 'test')")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    normal = meta.get("normal_class", NORMAL_CLASS)
    if not isinstance(normal, str) or not normal:
        raise DataError(f"{path}: meta.normal_class must be a name, got {normal!r}")
    return normal, doc[split]


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: field '{key}' missing or not a string")
    return value


def _relative(value: str, where: str, key: str) -> PurePosixPath:
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"{where}: {key} {value!r} must stay inside the object's folder")
    return rel


def _entry_sample(entry: Any, obj_dir: Path, name: str, normal: str, where: str) -> Sample:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: an entry is not an object")
    image_rel = _relative(_text(entry, "image_path", where), where, "image_path")
    where = f"{where} ({image_rel})"
    anomaly = _text(entry, "anomaly_class", where)
    image = obj_dir / image_rel
    check_regular_file(image)
    label = 0 if anomaly == normal else 1
    mask_value = entry.get("mask_path")
    mask = None
    if mask_value:
        mask = obj_dir / _relative(_text(entry, "mask_path", where), where, "mask_path")
        check_regular_file(mask)  # a listed mask that is gone: "<mask>: file not found"
    elif label:
        raise DataError(f"{image}: defective view ({anomaly}) has no mask_path in {where}")
    return Sample(image, name, label, mask if label else None, anomaly if label else "good")


def _check_views(samples: list[Sample], path: Path) -> None:
    """Every sample folder holds views C1..C5 once each (the multi-view protocol)."""
    views: dict[Path, list[str]] = defaultdict(list)
    for s in samples:
        views[s.image.parent].append(view_of(s.image))
    for folder, seen in views.items():
        missing = [v for v in VIEWS if v not in seen]
        twice = sorted({v for v in seen if seen.count(v) > 1})
        if missing or twice:
            problem = (f"lacks view {', '.join(missing)}" if missing
                       else f"lists view {', '.join(twice)} twice")
            raise DataError(f"{folder}: sample {problem} in {path} (Real-IAD samples have "
                            "views C1..C5; set data.complete_views=false for single-view "
                            "split files)")


def real_iad_samples(
    root: Path,
    split: Literal["train", "test"],
    categories: Sequence[str] | None = None,
    resolution: str = "1024",
    json_dir: str | Path | None = None,
    complete_views: bool = True,
) -> list[Sample]:
    """Samples of ``split`` for the chosen objects (all with a split file when None)."""
    check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root folder not found")
    images = root / f"realiad_{resolution}"
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found (data.resolution {resolution})")
    folder = json_folder(root, json_dir)
    samples: list[Sample] = []
    for name in select_categories(list_real_iad_objects(folder), categories, folder):
        path = folder / f"{name}.json"
        normal, entries = _read_split_file(path, split)
        obj_dir = images / name
        if not obj_dir.is_dir():
            raise DataError(f"{obj_dir}: object folder not found (listed by {path})")
        where = f"{path} {split}"
        group = [_entry_sample(e, obj_dir, name, normal, where) for e in entries]
        if not group:
            raise DataError(f"{path}: the '{split}' list is empty")
        if complete_views:
            _check_views(group, path)
        samples += group
    return samples
