"""`refad predict --format mvtec_ad2`: anomaly maps for the MVTec AD 2 evaluation server.

The private test splits (`test_private`, `test_private_mixed`) have no ground truth; they are
scored by the organisers' server (benchmark.mvtec.com) from files laid out as their public
utilities write them (the dataset class of `MVTecAD2_public_code_utils`, whose
`check_and_prepare_data_for_upload.py` checks a submission before upload):

    OUT/anomaly_images/OBJECT/SPLIT/<image path under SPLIT>.tiff        float16 anomaly map
    OUT/anomaly_images_thresholded/OBJECT/SPLIT/<image path>.png         uint8, 0 or 255

Assumed, as those utilities and published submissions do: one channel, at the image's own
size (refad's map, bilinearly resized from the model's input size); the thresholded PNG is
255 where the map is above the object's calibrated pixel threshold (set on normal images
only, by default the validation images), else 0. Inputs: the dataset root (every object),
object folders (their private splits) or split folders (any split, test_public included,
whose sub-folders good/ and bad/ are mirrored).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refad.atomic import write_atomic
from refad.data.mvtec_ad2 import PRIVATE_SPLITS, TEST_PUBLIC, list_mvtec_ad2_objects
from refad.errors import ConfigError, DataError
from refad.pipeline.postprocess import postprocess
from refad.reporting.float16_tiff import write_float16_tiff

SPLITS = (*PRIVATE_SPLITS, TEST_PUBLIC)
MAPS, THRESHOLDED = "anomaly_images", "anomaly_images_thresholded"


@dataclass
class SubmissionReport:
    written: dict[str, int] = field(default_factory=dict)  # "object/split" -> images
    failures: list[str] = field(default_factory=list)  # one line each


def submission_jobs(inputs: Sequence[Path | str]) -> list[tuple[str, str, Path]]:
    """(object, split, split folder) for each input, in order (module doc); DataError
    otherwise."""
    jobs: list[tuple[str, str, Path]] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            raise DataError(f"{item}: not a folder (give the MVTec AD 2 root, an object "
                            "folder or a split folder)")
        if item.name in SPLITS:
            jobs.append((item.resolve().parent.name, item.name, item))
            continue
        objects = [item] if (item / "train").is_dir() else [
            item / name for name in list_mvtec_ad2_objects(item)]
        for obj in objects:
            found = [(obj.resolve().name, s, obj / s) for s in PRIVATE_SPLITS if (obj / s).is_dir()]
            if not found:
                raise DataError(f"{obj}: no {' or '.join(PRIVATE_SPLITS)} folder")
            jobs += found
    return jobs


def _save_mask(path: Path, mask: np.ndarray) -> None:
    png = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    write_atomic(path, lambda tmp: png.save(tmp, format="PNG"))


def write_submission(
    run: Any, inputs: Sequence[Path | str], out: Path, batch_size: int = 8
) -> SubmissionReport:
    """Score every image of `inputs` with an opened run (`refad.runs.TrainedRun`) and write
    its two files under `out` (module doc)."""
    from refad.inference.predict import predict_images  # torch: only with a run

    jobs = submission_jobs(inputs)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: not empty (a submission folder must hold this run's maps "
                          "only; give a new --out)")
    report = SubmissionReport()
    for obj, split, folder in jobs:
        # test_public: its good/ and bad/ (ground_truth/ holds masks, not test images)
        scored = [folder / s for s in ("good", "bad") if (folder / s).is_dir()] \
            if split == TEST_PUBLIC else [folder]
        if not scored:
            raise DataError(f"{folder}: holds neither good/ nor bad/")
        decided, batches = predict_images(run, scored, category=obj, batch_size=batch_size)
        if decided.pixel_threshold is None:
            raise ConfigError(f"{run.path}: no calibrated pixel threshold for {obj!r}; the "
                              "thresholded maps cannot be written")
        key = f"{obj}/{split}"
        for batch in batches:
            report.failures += batch.failures
            for result in batch.results:
                # refad's one result step: the map at the image's size, the defect mask
                scored = postprocess(result.image, result.amap, result.score, decided, obj)
                if not scored.finite or scored.mask is None:
                    report.failures.append(f"{result.path}: anomaly map is not finite")
                    continue
                rel = Path(os.path.abspath(result.path)).relative_to(os.path.abspath(folder))
                write_float16_tiff(
                    out / MAPS / obj / split / rel.with_suffix(".tiff"), scored.anomaly_map)
                _save_mask(out / THRESHOLDED / obj / split / rel.with_suffix(".png"),
                           scored.mask)
                report.written[key] = report.written.get(key, 0) + 1
    return report


FORMATS = ("refad", "mvtec_ad2")


def predict_submission(
    run_dir: Path | None, inputs: Sequence[Path], out: Path, device: str | None,
    batch_size: int, model: Path | None = None, category: str | None = None,
) -> SubmissionReport:
    """`refad predict --format mvtec_ad2`: open the run and write the submission folder."""
    if model is not None or run_dir is None:
        raise ConfigError("--format mvtec_ad2: needs --run (a run folder), not --model")
    if category is not None:
        raise ConfigError("--format mvtec_ad2: the object folders name the categories; "
                          "drop --category")
    from refad.runs import open_run

    run = open_run(run_dir, device)
    return write_submission(run, inputs, out, batch_size)
