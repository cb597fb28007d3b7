"""Training: cached backbone features in, one checkpoint per epoch out, resumable.

The backbone is frozen and no image augmentation is used, so each training image goes through
the backbone once (feature cache); every step then draws fresh jitter on the cached features.
Randomness comes from generators seeded by (seed, epoch), so a resumed run replays exactly the
batches and noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from refad.backbones import (
    Backbone,
    FeatureCache,
    build_extractor,
    compute_features,
    feature_cache_key,
)
from refad.config import RunConfig
from refad.data import (
    ImageDataset,
    Sample,
    TileDataset,
    by_category,
    load_split,
    samples_fingerprint,
    split_validation,
    validation_split,
)
from refad.device import resolve_device
from refad.errors import DataError, TrainingError
from refad.inference import Scorer, calibrate
from refad.models.base import (
    AnomalyModel,
    FeatureSpec,
    OnePassModel,
    ReconstructionModel,
    load_state_checked,
)
from refad.models.registry import build_model
from refad.pipeline.tiled import TiledImages, Tiling
from refad.pipeline.tiling import TileGrid
from refad.runs import UNIFIED, CheckpointMeta, RunDir, backbone_identity, spec_to_dict
from refad.training.distributed import DistContext, init_distributed
from refad.training.loop import (
    STORAGE_DTYPES,
    DeviceFeatures,
    StepHook,
    StepSettings,
    compiled_loss,
    make_optimizer,
    run_epoch,
)


@dataclass
class UnitResult:
    name: str
    epochs: int
    final_loss: float
    seconds: float


def tiling_record(config: RunConfig) -> dict[str, float] | None:
    """The run's `data.tiling` as checkpoints and cache keys record it (None: off)."""
    tiling = Tiling.of(config.data.tiling)
    return None if tiling is None else tiling.to_record()


def extract_features(
    extractor: Backbone,
    samples: list[Sample],
    config: RunConfig,
    device: torch.device,
    cache: FeatureCache,
    progress: bool,
) -> list[torch.Tensor]:
    """Backbone levels of `samples` (N, C, H, W), computed once and cached by content key;
    with `data.tiling`, of every image's tiles in order (N = all tiles; `tile_grids` says
    which are whose)."""
    size, resize = config.data.image_size, config.data.resize
    tiling = Tiling.of(config.data.tiling)
    dataset: ImageDataset | TileDataset
    if tiling is None:
        dataset = ImageDataset(samples, size, extractor.mean, extractor.std, resize)
        extra: dict[str, float] = {}
    else:
        dataset = TileDataset(samples, tiling, size, extractor.mean, extractor.std)
        extra = {f"tiling_{k}": v for k, v in tiling.to_record().items()}
    # the batch and the device change the features in their last bits (other kernels): a
    # run that reads a cache written by another must be the run it would have been uncached
    key = feature_cache_key(extractor, samples_fingerprint(samples), size, resize,
                            feature_batch_size=config.train.feature_batch_size,
                            device=device.type, **extra)
    return cache.get_or_compute(
        key,
        lambda: compute_features(
            extractor,
            dataset,
            batch_size=config.train.feature_batch_size,
            device=device,
            num_workers=config.data.num_workers,
            progress=progress,
        ),
    )


def tile_grids(samples: list[Sample], config: RunConfig) -> list[TileGrid] | None:
    """Each image's tiles under `data.tiling`, as `extract_features` cuts them (None: off)."""
    tiling = Tiling.of(config.data.tiling)
    if tiling is None:
        return None
    return TileDataset(samples, tiling, config.data.image_size, (0, 0, 0), (1, 1, 1)).grids


def product_groups(samples: list[Sample], config: RunConfig) -> torch.Tensor:
    """Each level row's product: the index of its picture's category among the unit's sorted
    categories, once per tile under `data.tiling`."""
    names = sorted({s.category for s in samples})
    ids = torch.tensor([names.index(s.category) for s in samples], dtype=torch.long)
    grids = tile_grids(samples, config)
    if grids is None:
        return ids
    return ids.repeat_interleave(torch.tensor([len(g) for g in grids], dtype=torch.long))


@dataclass
class CalibrationSet:
    """The normal images that set a unit's thresholds: their levels, categories and origin;
    with tiling, `levels` are their tiles and `grids` say which are whose."""

    levels: list[torch.Tensor]
    categories: list[str]
    source: str  # "validation-normal" (held out), "dataset-validation" or "train-normal"
    grids: list[TileGrid] | None = None


def train_unit(
    name: str,
    levels: list[torch.Tensor],
    calibration: CalibrationSet,
    config: RunConfig,
    extractor: Backbone,
    folder: RunDir,
    device: torch.device,
    resume: bool,
    progress: bool,
    dctx: DistContext | None = None,
    groups: torch.Tensor | None = None,
) -> UnitResult:
    """Fit one model on cached levels (the method's way), checkpointing; calibrate at the end.
    `groups` gives each level row's product (index into the unit's sorted categories).

    Under torchrun every rank runs this with the same data; each takes its shard of every
    global batch (see `refad.training.distributed`) and only rank 0 writes files.
    """
    dctx = dctx or DistContext()
    spec = FeatureSpec(
        levels=tuple(extractor.levels),
        channels=tuple(lvl.shape[1] for lvl in levels),
        shapes=tuple((lvl.shape[2], lvl.shape[3]) for lvl in levels),
        image_size=config.data.hw,
        strides=tuple(extractor.strides),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        model = build_model(config.method, spec, config.model, device)
    meta = CheckpointMeta(
        method=config.method, epoch=0, epochs=config.train.epochs, spec=spec_to_dict(spec),
        backbone=backbone_identity(extractor, config.data.image_size, config.data.resize,
                                   tiling_record(config)),
        model_config=config.model.model_dump(),
    )
    t_start = time.perf_counter()
    optimizer = None
    if isinstance(model, OnePassModel):
        loss_value = fit_one_pass(name, model, levels, meta, config, folder, resume, progress,
                                  dctx, groups)
    else:
        optimizer = make_optimizer(model, config, device)
        loss_value = fit_gradient(name, model, optimizer, levels, meta, config, folder, device,
                                  resume, progress, dctx)
    if dctx.is_main:
        calibrate_unit(name, model, optimizer, calibration, config, folder, device)
    dctx.barrier()
    return UnitResult(name, config.train.epochs, loss_value, time.perf_counter() - t_start)


def fit_gradient(
    name: str,
    model: ReconstructionModel,
    optimizer: torch.optim.Optimizer,
    levels: list[torch.Tensor],
    meta: CheckpointMeta,
    config: RunConfig,
    folder: RunDir,
    device: torch.device,
    resume: bool,
    progress: bool,
    dctx: DistContext,
) -> float:
    """The optimiser loop: one checkpoint (weights and moments) per epoch; the last loss."""
    t = config.train
    loss_fn = compiled_loss(model, t.compile)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history: list[dict[str, float]] = []
    start = 0
    if resume and folder.has_checkpoint(name):
        loaded, saved = folder.load_model(name, device)
        model.load_state_dict(loaded.state_dict())
        folder.load_optimizer(name, optimizer, saved)
        history, start = list(saved.history), saved.epoch
    features = DeviceFeatures(levels, device, STORAGE_DTYPES[t.feature_storage])
    steps = -(-len(features) // t.batch_size)
    bar = tqdm(
        total=t.epochs * steps, initial=start * steps, desc=f"train {name}", unit="batch",
        disable=not progress,
    )
    loss_value = history[-1]["loss"] if history else float("nan")
    for epoch in range(start, t.epochs):
        settings = StepSettings.from_config(
            t, loss_fn=loss_fn, dctx=dctx, on_step=progress_hook(bar, epoch, device)
        )
        stats = run_epoch(model, optimizer, features, config, epoch, base_lrs, settings)
        if not math.isfinite(stats.loss):
            kept = f"epoch {epoch} is the last one saved" if epoch else "nothing was saved"
            raise TrainingError(
                f"{folder.unit_path(name)}: the training loss became {stats.loss} in epoch "
                f"{epoch + 1}; training stopped and {kept} (lower train.lr or set "
                "train.grad_clip)"
            )
        loss_value = stats.loss
        history.append({"epoch": epoch + 1, "loss": loss_value, "seconds": stats.seconds})
        meta.epoch, meta.history = epoch + 1, list(history)
        if dctx.is_main:
            folder.save_checkpoint(name, model, meta, optimizer)
    bar.close()
    return loss_value


def fit_one_pass(
    name: str,
    model: OnePassModel,
    levels: list[torch.Tensor],
    meta: CheckpointMeta,
    config: RunConfig,
    folder: RunDir,
    resume: bool,
    progress: bool,
    dctx: DistContext,
    groups: torch.Tensor | None = None,
) -> float:
    """A one-pass method sees the normal levels once, in chunks, and is saved as its only
    epoch (no optimiser file). A resume of a fitted unit reloads it; an unfitted one is fitted
    again from the start (the fit is cheap and deterministic). `groups`: each level row's
    product index. Returns NaN: there is no loss."""
    device = next(iter(model.buffers())).device
    if resume and folder.has_checkpoint(name):
        loaded, _ = folder.load_model(name, device)
        load_state_checked(model, loaded.state_dict(), str(folder.unit_path(name)))
        return float("nan")
    chunk = config.train.batch_size
    n = levels[0].shape[0]
    starts = range(0, n, chunk)
    batches = (
        [lvl[i : i + chunk].to(device, torch.float32) for lvl in levels]
        for i in tqdm(starts, desc=f"fit {name}", unit="batch", disable=not progress)
    )
    model.fit(batches, seed=config.train.seed, groups=groups)
    meta.epoch, meta.epochs, meta.history = 1, 1, []  # no loss to record
    if dctx.is_main:
        folder.save_checkpoint(name, model, meta)
    return float("nan")


def calibrate_unit(
    name: str,
    model: AnomalyModel,
    optimizer: torch.optim.Optimizer | None,
    calibration: CalibrationSet,
    config: RunConfig,
    folder: RunDir,
    device: torch.device,
) -> None:
    """Thresholds, pixel threshold and map range from normal images, saved with the model
    (once: a resumed run that is calibrated already keeps its numbers)."""
    t = config.train
    meta = folder.read_meta(name)
    if meta.calibration is not None:
        return
    tiling = Tiling.of(config.data.tiling)
    tiles = None if tiling is None or calibration.grids is None else TiledImages(
        calibration.grids, tiling.overlap)
    calibrated = calibrate(
        Scorer(model, device), calibration.levels, calibration.categories,
        t.feature_batch_size, t.threshold_quantile, calibration.source, t.threshold_rule,
        tiles,
    )
    if calibrated.threshold is None:  # NaN or infinite
        raise TrainingError(
            f"{folder.unit_path(name)}: the trained model gives non-finite scores on "
            "normal images; no calibration saved (training diverged: lower train.lr)"
        )
    calibrated = replace(calibrated, mask_rule=t.mask_rule,
                         mask_peak_fraction=t.mask_peak_fraction)
    meta.calibration = calibrated.to_record()
    folder.save_checkpoint(name, model, meta, optimizer)


def progress_hook(bar: tqdm, epoch: int, device: torch.device) -> StepHook:
    """Advance the bar per step; show the running loss (a host sync on CUDA: every 25 steps)."""
    tic, seen, every = time.perf_counter(), [0], 1 if device.type == "cpu" else 25

    def hook(loss: torch.Tensor, images: int) -> None:
        seen[0] += images
        bar.update(1)
        if bar.disable or bar.n % every:
            return
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}",
                        img_s=f"{seen[0] / (time.perf_counter() - tic):.1f}", refresh=False)

    return hook


def group_units(config: RunConfig, samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Unified: one unit with every category. Per-category: one unit per category."""
    if config.train.mode == "unified":
        return {UNIFIED: list(samples)}
    groups = by_category(samples)
    if UNIFIED in groups:  # its model would be stored, opened and exported as the unified one
        raise DataError(
            f"category {UNIFIED!r}: a per-category run names its models by category, and "
            f"{UNIFIED!r} is the name of a unified run's model; rename that category's folder "
            "(or train unified)")
    return groups


def fit(
    config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True
) -> list[UnitResult]:
    """Train a run (unified or per category) into `run_dir`. Returns one result per unit.

    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel.
    """
    folder = RunDir(Path(run_dir))
    dctx, device = init_distributed(resolve_device(config.device))
    lock = folder.lock("train") if dctx.is_main else contextlib.nullcontext()
    with lock:
        created = dctx.is_main and not resume
        if dctx.is_main:
            config = folder.resume() if resume else folder.create(config)
            if resume:
                folder.check_checkpoints(config, resuming=True)
            folder.remove_leftovers(config)
        try:
            return _fit_units(config, folder, dctx, device, resume, progress)
        except BaseException:
            if created:
                folder.discard_if_untrained(config)
            raise


def _fit_units(
    config: RunConfig,
    folder: RunDir,
    dctx: DistContext,
    device: torch.device,
    resume: bool,
    progress: bool,
) -> list[UnitResult]:
    dctx.barrier()
    if not dctx.is_main:
        config = folder.read_config()
    progress = progress and dctx.is_main
    samples = load_split(config.data, "train")  # before the backbone: no download for bad data
    defective = next((s for s in samples if s.label != 0), None)
    if defective is not None:  # trained on, and calibrated with, as a normal image
        raise DataError(f"{defective.image}: a defective image among the training images; "
                        "refad trains and calibrates on normal images only")
    calibration_set = config.calibration_set
    # the dataset's own normal validation images (MVTec AD 2), read before the backbone too
    own_validation = validation_split(config.data) if calibration_set == "validation" else None
    if dctx.is_main:
        folder.record_training_data(samples_fingerprint(samples), len(samples), resume)
    extractor = build_extractor(config.backbone, device)
    extractor.check_image_size(config.data.hw)  # a ViT's patches, refused before any features
    train_samples, val_samples = split_validation(
        samples, config.train.val_fraction, config.train.seed
    )
    if own_validation is not None:
        val_samples = own_validation
    cache_dir = Path(config.train.feature_cache) if config.train.feature_cache else None
    cache = FeatureCache(cache_dir)
    results = []
    val_units = group_units(config, val_samples) if val_samples else {}
    for name, unit_samples in group_units(config, train_samples).items():
        levels = extract_features(extractor, unit_samples, config, device, cache, progress)
        dctx.barrier()
        if calibration_set in ("held_out", "validation"):
            calib_samples = val_units[name]
            calib = extract_features(extractor, calib_samples, config, device, cache, progress)
            source = "validation-normal" if calibration_set == "held_out" else "dataset-validation"
        else:
            calib, calib_samples, source = levels, unit_samples, "train-normal"
        calibration = CalibrationSet(calib, [s.category for s in calib_samples], source,
                                     tile_grids(calib_samples, config))
        results.append(
            train_unit(name, levels, calibration, config, extractor, folder, device, resume,
                       progress, dctx, product_groups(unit_samples, config))
        )
    return results
