"""The shape of the JSON files of a run folder, checked once when they are read.

These files are plain JSON that anyone can edit. A field of the wrong type would otherwise fail
deep inside a report or a prediction with a traceback, or, for a threshold, decide silently
wrong. Each reader validates the whole file and names the first bad field in one line. Fields
that refad does not read are allowed, so newer files still open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from refad.errors import CheckpointError
from refad.runs.recorded import check_calibration, check_categories, check_file_name

Finite = Annotated[float, Field(allow_inf_nan=False)]  # JSON's 1e999 reads as infinity
_OPEN = ConfigDict(extra="allow")


class TestScoreRow(BaseModel):
    """One image's line in test_scores.json, checked before a report draws from it."""

    model_config = _OPEN

    category: str
    image: str
    mask: str | None = None
    defect: str
    label: Literal[0, 1]
    score: float


class CategoryDecisions(BaseModel):
    model_config = _OPEN

    threshold: Finite | None = None
    threshold_source: str | None = None
    tp: int
    fp: int
    tn: int
    fn: int
    false_alarm_rate: Finite | None = None
    miss_rate: Finite | None = None
    precision: Finite | None = None
    recall: Finite | None = None
    f1: Finite | None = None


class Decisions(BaseModel):
    model_config = _OPEN

    rule: str
    calibration_images: list[str] = []
    categories: dict[str, CategoryDecisions]
    mean: dict[str, Finite | None]


class CheckpointIdentity(BaseModel):
    model_config = _OPEN

    epoch: int
    model_sha256: str | None = None


class MetricsFile(BaseModel):
    """metrics.json as `refad test` writes it (`decisions` is absent in older runs)."""

    model_config = _OPEN

    method: str
    backbone: str
    image_size: int | list[int]  # [height, width] when not square
    seconds: Finite
    categories: dict[str, dict[str, Finite | None]]
    mean: dict[str, Finite | None]
    mean_categories: dict[str, int] = {}
    notes: list[str] = []
    decisions: Decisions | None = None
    evaluation: str | None = None  # also in the test_scores.json written with it
    checkpoints: dict[str, CheckpointIdentity] = {}  # per unit, the model that was scored


EVALUATION_ID = "evaluation"


class _Thresholds(TypedDict, total=False):
    images: int
    image_score_median: Finite
    image_score_max: Finite
    threshold: Finite | None
    pixel_threshold: Finite | None
    map_floor: Finite
    map_ceiling: Finite


class _Calibration(_Thresholds, total=False):
    source: str
    threshold_quantile: Finite
    threshold_rule: str
    categories: dict[str, _Thresholds]


class _HistoryRow(TypedDict):
    epoch: int
    loss: Finite
    seconds: NotRequired[Finite]


class _FileEntry(TypedDict):
    name: str
    bytes: int
    sha256: str


class _Spec(TypedDict):
    levels: list[int]
    channels: list[int]
    shapes: list[list[int]]
    image_size: int | list[int]  # [height, width] when not square
    strides: NotRequired[list[int]]  # absent before strides were recorded


class CheckpointFile(TypedDict):
    """checkpoint.json (a TypedDict: its field `model_config` is a name BaseModel keeps)."""

    format: str
    method: str
    epoch: int
    epochs: int
    spec: _Spec
    backbone: dict[str, Any]
    model_config: dict[str, Any]
    history: NotRequired[list[_HistoryRow]]
    calibration: NotRequired[_Calibration | None]
    files: NotRequired[dict[Literal["model", "optimizer"], _FileEntry]]


# Strict: "3" is no epoch and true is no threshold (JSON's numbers are already numbers).
METRICS = TypeAdapter(MetricsFile)
SCORE_ROW = TypeAdapter(TestScoreRow)
CHECKPOINT = TypeAdapter(CheckpointFile)


def check_file(adapter: TypeAdapter[Any], data: Any, path: Path | str, where: str = "") -> Any:
    """`data` validated by `adapter` (one of the above); the first bad field becomes a one-line
    CheckpointError naming `path` and the field (`where` prefixes its location)."""
    try:
        return adapter.validate_python(data, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        location = f"{where}.{field}" if where and field else where or field or "top level"
        raise CheckpointError(
            f"{path}: {location}: {err['msg']} (edited or foreign file? run refad again to "
            "rewrite it)"
        ) from None


def check_checkpoint(data: Any, path: Path | str) -> Any:
    """checkpoint.json checked whole: its shape, then what no training writes (the rules an
    export's metadata shares, `refad.runs.recorded`): a threshold at or below 0, an inverted
    colour range, a category without its threshold, a tensor file named outside the folder."""
    check_file(CHECKPOINT, data, path)
    calibration = data.get("calibration")
    if calibration is not None:
        check_calibration(calibration, f"{path}: calibration")
        if "categories" in calibration:
            check_categories(calibration["categories"], f"{path}: calibration.categories",
                             calibration)
    for kind, entry in (data.get("files") or {}).items():
        check_file_name(entry["name"], f"{path}: files.{kind}.name", "run")
    return data
