"""The images to predict, read, batched and named: torch-free, shared by every scoring path.

A folder with some unreadable files is still processed: every good image gets its result and
each bad one a one-line failure, so no work is lost (writing the results is
`refad.reporting.predictions`; the caller exits non-zero when something failed).

Names of the outputs mirror the input tree and never collide:

* each image's `relative_path` is taken from the common parent of the inputs (a folder input
  counts as its own parent, a file input as its folder): `refad predict in/` gives `a/x.png`
  and `b/x.png` for `in/a/x.png` and `in/b/x.png`; a single file input gives its name;
* its output `name` is that path without the suffix (`a/x`), unless another image in the same
  folder has the same stem, or a name equal to this stem; then the full file name is kept
  (`c/a.png` and `c/a.jpg`; `c/a.png.jpg` next to `c/a.png`). Two different files therefore never
  share a name, and the name does not depend on which files happen to be readable.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from refad.data.images import read_image_rgb
from refad.data.splits import find_images
from refad.errors import RefadError
from refad.pipeline.postprocess import is_finite


@dataclass
class ImageResult:
    """One scored image: its pixels, its map at the model's input size, its score, and the
    names its outputs take (see the module doc)."""

    path: Path
    image: np.ndarray  # (H, W, 3) uint8 as read
    amap: np.ndarray  # (S, S) float32
    score: float
    relative_path: PurePosixPath
    name: PurePosixPath  # outputs are `<name>_heatmap.png`, ... under the output folder

    @property
    def finite(self) -> bool:
        """False when the score or a map value is NaN or infinite (`refad.pipeline`)."""
        return is_finite(self.score, self.amap)


@dataclass
class PredictionBatch:
    results: list[ImageResult]
    failures: list[str]  # one line each: "<file>: <problem>"
    notes: list[str] = field(default_factory=list)  # e.g. a file given again through a link


def _absolute(path: Path | str) -> Path:
    """Absolute and normalised, without resolving symbolic links (a link inside an input folder
    stays inside it)."""
    return Path(os.path.abspath(path))


def relative_paths(inputs: Sequence[Path | str], paths: Sequence[Path]) -> list[PurePosixPath]:
    """Each of `paths` relative to the common parent of `inputs` (module doc)."""
    bases = [_absolute(p) if Path(p).is_dir() else _absolute(p).parent for p in inputs]
    root = Path(os.path.commonpath(bases)) if bases else Path.cwd()
    return [PurePosixPath(_absolute(p).relative_to(root).as_posix()) for p in paths]


def output_names(relatives: Sequence[PurePosixPath]) -> list[PurePosixPath]:
    """The collision-free output name of each relative path (module doc)."""
    folders: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    for rel in relatives:
        folders[rel.parent].append(rel)
    chosen: dict[PurePosixPath, PurePosixPath] = {}
    for folder, files in folders.items():
        stems = Counter(f.stem for f in files)
        names = Counter(f.name for f in files)
        for f in files:
            # another file has this stem, or is named exactly this stem ("a.png" vs "a.png.jpg")
            other_named_stem = names[f.stem] - (f.name == f.stem) > 0
            clash = stems[f.stem] > 1 or other_named_stem
            chosen[f] = folder / (f.name if clash else f.stem)
    return [chosen[rel] for rel in relatives]


ScoreFn = Callable[[list[np.ndarray]], tuple[Sequence[np.ndarray], list[float]]]
"""(h, w, 3) uint8 images -> (maps: (B, H, W) float32 at the model's input size, each cut to
the part that shows its picture where the input was padded, scores)."""


def scored_batches(
    inputs: Sequence[Path | str], batch_size: int, score: ScoreFn
) -> Iterator[PredictionBatch]:
    """Read, score and name the images of `inputs` batch by batch; an unreadable image is a
    failure line, never the end of the others (any scoring path: PyTorch or an export)."""
    paths, notes = find_images(inputs)
    relatives = relative_paths(inputs, paths)
    names = dict(zip(paths, zip(relatives, output_names(relatives), strict=True), strict=True))
    for start in range(0, len(paths), batch_size):
        images, kept, failures = [], [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(read_image_rgb(path))
                kept.append(path)
            except RefadError as exc:
                failures.append(str(exc))
        if not images:
            yield PredictionBatch([], failures, notes)
            notes = []
            continue
        maps, values = score(images)
        results = [
            ImageResult(path, image, amap, float(value), *names[path])
            for path, image, amap, value in zip(kept, images, maps, values, strict=True)
        ]
        yield PredictionBatch(results, failures, notes)
        notes = []  # said once, with the first batch
