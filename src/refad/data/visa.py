"""VisA in its released layout, driven by the official split file ``split_csv/1cls.csv``.

The csv has columns ``object,split,label,image,mask`` with paths relative to the VisA root, labels
``normal`` / ``anomaly``. VisA gives no defect types, so anomalous samples get defect
``"anomaly"``. Its masks are label maps (0 background, small non-zero values for defects), hence
``mask_is_label_map=True``: this is the binarisation of the dataset's own preparation script.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from refad.data.samples import SPLITS, Sample, check_category_name, check_split, select_categories
from refad.errors import DataError

REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


def _read_rows(split_csv: Path) -> list[dict[str, str]]:
    if not split_csv.is_file():
        raise DataError(f"{split_csv}: VisA split csv not found")
    try:
        with split_csv.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(
                    f"{split_csv}: missing column(s) {', '.join(missing)} "
                    f"(need {','.join(REQUIRED_COLUMNS)})"
                )
            reader.fieldnames = columns
            rows = []
            for row in reader:  # line_num: the file's line, blank and multi-line rows counted
                clean = {k: (v or "").strip() for k, v in row.items() if k}
                rows.append({**clean, "line": str(reader.line_num)})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{split_csv}: cannot read csv ({type(exc).__name__}: {exc})") from None
    _check_rows(split_csv, rows)
    return rows


def _check_rows(split_csv: Path, rows: list[dict[str, str]]) -> None:
    """The whole file, whatever split and categories are asked for: a row in another split
    that is mistyped would otherwise vanish without a word, and an image listed twice would
    be scored twice (or be a test image and a training image at once)."""
    first: dict[str, str] = {}
    for row in rows:
        where = f"{split_csv} line {row['line']}"
        check_category_name(row["object"], where)
        if row["split"] not in SPLITS:
            raise DataError(f"{where}: split must be train or test, got {row['split']!r}")
        if row["image"] and row["image"] == row["mask"]:
            raise DataError(f"{where}: the mask is the image itself ({row['image']})")
        seen = first.setdefault(row["image"], row["line"])
        if row["image"] and seen != row["line"]:
            raise DataError(f"{where}: {row['image']} is listed again (first on line {seen}); "
                            "an image is in one split, once")


def visa_samples(
    root: Path,
    split: Literal["train", "test"],
    categories: Sequence[str] | None = None,
    split_csv: Path | None = None,
) -> list[Sample]:
    """Samples of ``split`` listed in the split csv (default ``root/split_csv/1cls.csv``).

    Sorted by (category, image path). Every listed image, and the mask of every anomalous row,
    must exist: a missing one is a DataError naming the file and the csv line.
    """
    check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VisA root folder not found")
    csv_path = Path(split_csv) if split_csv is not None else root / "split_csv" / "1cls.csv"
    rows = _read_rows(csv_path)
    available = sorted({r["object"] for r in rows if r["object"]})
    if not available:
        raise DataError(f"{csv_path}: no rows")
    chosen = set(select_categories(available, categories, csv_path))

    samples: list[Sample] = []
    for row in rows:
        if row["split"] != split or row["object"] not in chosen:
            continue
        where = f"{csv_path} line {row['line']}"
        if row["label"] not in _LABELS:
            raise DataError(f"{where}: label must be normal or anomaly, got {row['label']!r}")
        label = _LABELS[row["label"]]
        if split == "train" and label == 1:  # VisA's 2cls split files list some: trained on
            # and calibrated with as a normal image, silently
            raise DataError(f"{where}: an anomalous image in the train split; refad trains "
                            "and calibrates on normal images only (use the 1cls split, or "
                            "move the row to test)")
        if not row["image"]:
            raise DataError(f"{where}: empty image path")
        image = root / row["image"]
        if not image.is_file():
            raise DataError(f"{image}: not a regular file (listed in {where})" if image.exists()
                            else f"{image}: image listed in {where} not found")
        mask: Path | None = None
        if row["mask"]:
            mask = root / row["mask"]
            if not mask.is_file():
                raise DataError(f"{mask}: not a regular file (listed in {where})" if mask.exists()
                                else f"{mask}: mask listed in {where} not found")
        elif label == 1:
            raise DataError(f"{image}: anomalous image has no mask in {where}")
        defect = "anomaly" if label == 1 else "good"
        samples.append(Sample(image, row["object"], label, mask, defect, mask_is_label_map=True))
    if not samples:
        raise DataError(f"{csv_path}: no {split} rows for {', '.join(sorted(chosen))}")
    samples.sort(key=lambda s: (s.category, str(s.image)))
    return samples
