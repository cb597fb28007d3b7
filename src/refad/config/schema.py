"""The configuration of a run (`RunConfig`), validated once and saved as `config.json`.

Two discriminated unions keep every field meaningful for the run it describes: `data` by
dataset layout (`kind`), `model` by method (`method`). Presets (`refad.config.presets`) fill
them with each paper's settings; flags, `--set`, a config file and the Python API all reach
this same schema (`refad.config.overrides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from refad.config.base import StrictModel, name_union_tags
from refad.config.methods import METHOD_CONFIGS, MethodConfig, model_section
from refad.errors import ConfigError

# The paper's backbone: the documented default for users who can download timm weights.
DEFAULT_BACKBONE = "tf_efficientnet_b6"
DEFAULT_LEVELS: tuple[int, ...] = (2, 3)
# Input sizes beyond this need more memory than any supported device holds for one image's
# attention maps; a typo such as 100000 is refused up front instead of running out of memory.
MAX_IMAGE_SIZE = 2048
# Other sizes of a run, each far above any sensible setting (a typo is refused, not run).
MAX_EPOCHS = 100_000
MAX_BATCH = 4096  # images per step or per feature batch
MAX_WORKERS = 256
MAX_KERNEL = 31  # local aggregation of backbone features (the papers: 1 or 3)


# Backbone kinds and the largest level index each can name before the model is built (its real
# depth is checked when it is: a CNN has timm feature levels 0..4, a ViT-g has 40 blocks).
BACKBONE_KINDS = ("cnn", "vit")
MAX_LEVEL = {"cnn": 4, "vit": 47}


def check_levels(levels: Sequence[int], kind: str = "cnn") -> tuple[int, ...]:
    """Feature levels: distinct, ascending, non-negative indices (timm's order): timm
    out_indices of a CNN, block indices of a ViT. The one rule, for config and extractor."""
    levels = tuple(int(v) for v in levels)
    if not levels:
        raise ConfigError("backbone.levels: at least one feature level is needed")
    if any(v < 0 for v in levels) or any(b <= a for a, b in pairwise(levels)):
        raise ConfigError(f"backbone.levels: {list(levels)} must be non-negative and ascending")
    top = MAX_LEVEL.get(kind)
    if top is None:
        raise ConfigError(f"backbone.kind: {kind!r} is not one of {', '.join(BACKBONE_KINDS)}")
    if levels[-1] > top:
        what = "timm feature levels of a CNN are 0..4" if kind == "cnn" else (
            f"block indices of a ViT are at most {top}")
        raise ConfigError(f"backbone.levels: {list(levels)} out of range ({what})")
    return levels


def check_image_size(value: int | list[int]) -> int | list[int]:
    """`data.image_size`: an integer (a square, as every config before (height, width)) or
    [height, width], each side in 32..MAX_IMAGE_SIZE; kept in the form given."""
    sides = [value] if isinstance(value, int) else list(value)
    if len(sides) not in (1, 2) or isinstance(value, list) and len(sides) != 2:
        raise ValueError("expected an integer or [height, width]")
    for side in sides:
        if not 32 <= side <= MAX_IMAGE_SIZE:
            raise ValueError(f"each side must be in 32..{MAX_IMAGE_SIZE} pixels")
    return value


ImageSizeField = Annotated[int | list[int], AfterValidator(check_image_size)]
ResizeRule = Literal["stretch", "pad"]


class _InputSize:
    """The input size of a data section as (height, width), whatever form the file holds.
    (A plain mixin with no annotation, so the sections keep their field order.)"""

    @property
    def hw(self) -> tuple[int, int]:
        size: int | list[int] = self.image_size  # type: ignore[attr-defined]
        return (size, size) if isinstance(size, int) else (size[0], size[1])


def check_kernel(kernel: int) -> int:
    """Local aggregation kernel: odd, so the aggregated map keeps its size."""
    if int(kernel) != kernel or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"backbone.aggregate_kernel: {kernel} must be a positive odd integer")
    return int(kernel)


class TilingConfig(StrictModel):
    """`data.tiling`: score (and train on) overlapping tiles of the model's input size cut
    from the image at `scale` times its own resolution, instead of resizing the whole image
    to the input size (`refad.pipeline.tiled`). A defect of a few pixels on a large image
    keeps its pixels. Bounds: a tile's step stays >= 10% of its side (overlap <= 0.9), and a
    scaled image stays within the image guards (checked per image when it is scored)."""

    overlap: float = Field(0.25, ge=0, le=0.9)  # fraction of a tile shared with its neighbour
    scale: float = Field(1.0, gt=0, le=4)  # the image is resized by this factor first


def _omit_untiled(data: dict[str, Any], tiling: TilingConfig | None) -> dict[str, Any]:
    """A run without tiling saves its data section as before tiling existed (config.json
    byte for byte the same)."""
    if tiling is None:
        data.pop("tiling", None)
    return data


class _DataCommon(_InputSize, StrictModel):
    categories: list[str] | None = None  # None: all categories found
    image_size: ImageSizeField = 256  # pixels: N (square) or [height, width]
    # how a picture of another aspect ratio reaches image_size (refad.pipeline.preprocess):
    # "stretch" (resize to it) or "pad" (keep the aspect ratio, fill the rest)
    resize: ResizeRule = "stretch"
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    # None: each image is resized to image_size; else tiles of image_size (TilingConfig)
    tiling: TilingConfig | None = None

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_untiled(handler(self), self.tiling)


class MVTecData(_DataCommon):
    """MVTec-AD layout: ROOT/CAT/{train,test,ground_truth}/..."""

    kind: Literal["mvtec"] = "mvtec"
    root: str | None = None


class VisaData(_DataCommon):
    """VisA layout with its split file (default ROOT/split_csv/1cls.csv)."""

    kind: Literal["visa"] = "visa"
    root: str | None = None
    split_csv: str | None = None


class MVTecAD2Data(_DataCommon):
    """MVTec AD 2 layout: ROOT/OBJECT/{train/good, validation/good, test_public/{good, bad,
    ground_truth/bad}}; validation/good calibrates (`refad.data.mvtec_ad2`)."""

    kind: Literal["mvtec_ad2"] = "mvtec_ad2"
    root: str | None = None


class RealIADData(_DataCommon):
    """Real-IAD layout: ROOT/realiad_<resolution>/OBJECT/{OK,NG}/... with the JSON split files
    (default ROOT/realiad_jsons/realiad_jsons/OBJECT.json; `refad.data.real_iad`)."""

    kind: Literal["real_iad"] = "real_iad"
    root: str | None = None
    resolution: Literal["256", "512", "1024", "raw"] = "1024"
    json_dir: str | None = None
    complete_views: bool = True  # every sample lists views C1..C5 (False: single-view files)


class FolderData(_InputSize, StrictModel):
    """Plain folders of one product: normal images, test defects, their masks, test normals."""

    kind: Literal["folder"] = "folder"
    normal_dir: str | None = None
    anomalous_dir: str | None = None
    mask_dir: str | None = None
    test_normal_dir: str | None = None
    image_size: ImageSizeField = 256  # as in _DataCommon
    resize: ResizeRule = "stretch"
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    tiling: TilingConfig | None = None  # as in _DataCommon

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_untiled(handler(self), self.tiling)


DataConfig = Annotated[
    MVTecData | VisaData | FolderData | MVTecAD2Data | RealIADData, Field(discriminator="kind")
]
DATA_LAYOUTS: dict[str, type[StrictModel]] = {
    "mvtec": MVTecData,
    "visa": VisaData,
    "folder": FolderData,
    "mvtec_ad2": MVTecAD2Data,
    "real_iad": RealIADData,
}
name_union_tags("data", DATA_LAYOUTS)
# Layouts that ship their own normal validation images, which calibrate a run by default.
LAYOUTS_WITH_VALIDATION = ("mvtec_ad2",)


class BackboneConfig(StrictModel):
    """Frozen feature extractor: timm name, its kind, feature levels and weights.

    `kind` "cnn": `levels` are timm feature levels (out_indices, 0..4); "vit": a vision
    transformer whose `levels` are block indices (patch tokens of those blocks, on a grid).
    """

    name: str = DEFAULT_BACKBONE
    levels: list[int] = Field(default_factory=lambda: list(DEFAULT_LEVELS))
    weights: str = "auto"  # "auto" | "none" | path to .pth/.safetensors
    aggregate_kernel: int = Field(3, le=MAX_KERNEL)
    kind: Literal["cnn", "vit"] = "cnn"

    @model_validator(mode="after")
    def _levels_valid(self) -> BackboneConfig:
        try:
            check_levels(self.levels, self.kind)
        except ConfigError as exc:  # pydantic names the file or override it came from
            raise ValueError(str(exc)) from None
        return self

    @field_validator("aggregate_kernel")
    @classmethod
    def _kernel_valid(cls, v: int) -> int:
        if v < 1 or v % 2 == 0:
            raise ValueError("must be a positive odd integer (the map keeps its size)")
        return v


def _shared(default: Any, **kw: Any) -> Any:
    """A training field that describes the run, not the method: `refad compare` gives every
    method the same value (see `shared_train_fields`)."""
    return Field(default, json_schema_extra={"shared": True}, **kw)


class TrainConfig(StrictModel):
    """Optimisation schedule. Checkpoint = last epoch (never chosen on test data)."""

    epochs: int = Field(200, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(4, ge=1, le=MAX_BATCH)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_step_epoch: int | None = Field(None, ge=1, le=MAX_EPOCHS)  # lr *= lr_gamma from here
    lr_gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    # the loop derives per-epoch seeds (seed * 1_000_003 + epoch) that torch takes as int64
    seed: int = Field(3407, ge=0, lt=2**32)
    mode: Literal["unified", "per-category"] = _shared("unified")
    feature_cache: str | None = _shared(None)  # folder for cached features; None: in memory
    val_fraction: float = _shared(0.0, ge=0, lt=1)  # normal train images held out (calibration)
    # which normal images set the thresholds: "held_out" (the val_fraction part, never trained
    # on: honest) or "training" (optimistic scores, so more false alarms); "auto": held_out
    # when val_fraction > 0, else training (`calibration_set`; the checkpoint records it);
    # "validation": the dataset's own normal validation images (MVTec AD 2's validation/good),
    # which "auto" picks for such a layout when val_fraction is 0
    calibration_images: Literal["auto", "held_out", "training", "validation"] = _shared("auto")
    threshold_quantile: float = _shared(0.99, gt=0, lt=1)
    # how that quantile of normal scores is estimated: "empirical" (the sample quantile: about
    # the maximum of few images, so false alarms near 1/(n+1)) or "normal_tail" (never below
    # mean + z*std); see refad.inference.calibration
    threshold_rule: Literal["empirical", "normal_tail"] = _shared("normal_tail")
    # how defect masks are drawn (refad.pipeline.defects): "peak" (pixels above the larger of
    # the pixel threshold and floor + mask_peak_fraction * (peak - floor), on maps whose peak
    # passes the pixel threshold) or "normal_max" (every pixel above the pixel threshold: blobs
    # several times the defect); benchmarks/mask_rules.md
    mask_rule: Literal["peak", "normal_max"] = _shared("peak")
    mask_peak_fraction: float = _shared(0.85, gt=0, lt=1)
    feature_batch_size: int = _shared(16, ge=1, le=MAX_BATCH)
    # bf16 autocast of training steps on CUDA (ignored on the CPU, which stays float32); off by
    # default so that CPU and GPU runs agree to float tolerance.
    amp: bool = _shared(False)
    # dtype of the cached features held on the training device ("float16" halves the memory)
    feature_storage: Literal["float32", "float16", "bfloat16"] = _shared("float32")
    # torch.compile of the training loss (forward and backward): "none" runs eagerly; on CUDA,
    # "reduce-overhead" adds CUDA graphs (the eager step is bound by kernel launches). The
    # jitter's generator draws stay eager, so the noise stream is the same in every mode;
    # dropout (UniAD) draws from the compiler's generator instead: other masks, same law.
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = _shared("none")


    @model_validator(mode="after")
    def _calibration_has_images(self) -> TrainConfig:
        if self.calibration_images == "held_out" and self.val_fraction == 0:
            raise ValueError(
                "calibration_images 'held_out' needs train.val_fraction > 0 (the part of the "
                "normal training images to hold out)"
            )
        if self.calibration_images in ("training", "validation") and self.val_fraction > 0:
            raise ValueError(
                f"calibration_images '{self.calibration_images}' with val_fraction "
                f"{self.val_fraction} would hold "
                "out training images for nothing; set calibration_images=held_out or "
                "val_fraction=0"
            )
        return self

    @property
    def calibration_set(self) -> Literal["held_out", "training", "validation"]:
        """The normal images that calibrate this run ("auto" resolved without the data
        layout: `RunConfig.calibration_set` knows whether the dataset has its own)."""
        if self.calibration_images != "auto":
            return self.calibration_images
        return "held_out" if self.val_fraction > 0 else "training"


def shared_train_fields() -> tuple[str, ...]:
    """Training fields marked as describing the run (same for every method in a comparison)."""
    return tuple(
        name
        for name, f in TrainConfig.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("shared")
    )


class RunConfig(StrictModel):
    """Everything needed to reproduce a run."""

    method: str = "rlr"
    data: DataConfig = Field(default_factory=MVTecData)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # the method's registered config (`refad.config.methods`); serialised as that class
    model: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: model_section(
        {"method": "rlr"}))
    device: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _fill_discriminators(cls, data: Any) -> Any:
        """Accept the saved form of every refad version: a `model` section without its
        `method` (taken from the run's), and a flat `data` section holding the empty fields
        of the other layouts (config.json files written before the unions)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method", "rlr")
        model = data.setdefault("model", {})
        if isinstance(model, dict) and "method" not in model:
            if method not in METHOD_CONFIGS:
                raise ValueError(
                    f"unknown method {method!r}; available: {', '.join(sorted(METHOD_CONFIGS))}"
                )
            data["model"] = {"method": method, **model}
        section = data.get("data")
        if isinstance(section, dict):
            section = {"kind": "mvtec", **section}
            layout = DATA_LAYOUTS.get(section["kind"])
            if layout is not None:
                data["data"] = {
                    k: v
                    for k, v in section.items()
                    if k in layout.model_fields or v is not None
                }
        return data

    @property
    def calibration_set(self) -> Literal["held_out", "training", "validation"]:
        """The normal images that calibrate this run: the dataset's own validation images
        under "auto" when its layout has them and nothing is held out."""
        if (self.train.calibration_images == "auto" and self.train.val_fraction == 0
                and self.data.kind in LAYOUTS_WITH_VALIDATION):
            return "validation"
        return self.train.calibration_set

    @model_validator(mode="after")
    def _validation_images_exist(self) -> RunConfig:
        if (self.train.calibration_images == "validation"
                and self.data.kind not in LAYOUTS_WITH_VALIDATION):
            raise ValueError(
                f"train.calibration_images 'validation' needs a layout with its own validation "
                f"images ({', '.join(LAYOUTS_WITH_VALIDATION)}); data.kind is "
                f"{self.data.kind!r} (use held_out with train.val_fraction > 0)")
        return self

    @model_validator(mode="after")
    def _tiles_are_not_resized(self) -> RunConfig:
        if self.data.tiling is not None and self.data.resize != "stretch":
            raise ValueError(
                f"data.tiling cuts tiles of data.image_size from the image, so data.resize "
                f"{self.data.resize!r} has nothing to resize; leave it 'stretch'")
        return self

    @model_validator(mode="after")
    def _method_matches_model(self) -> RunConfig:
        if self.model.method != self.method:
            raise ValueError(
                f"model.method is {self.model.method!r} but the run's method is {self.method!r}"
            )
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _typed_model(cls, value: Any) -> Any:
        return model_section(value)

    @model_validator(mode="after")
    def _model_fits_levels(self) -> RunConfig:
        self.model.check_levels(self.backbone.levels)
        return self
