"""Training: cached backbone features in, one checkpoint per epoch out, resumable.

The backbone is frozen and no image augmentation is used, so each training image goes through
the backbone once (feature cache); every step then draws fresh jitter on the cached features.
Randomness comes from generators seeded by (seed, epoch), so a resumed run replays exactly the
batches and noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from refad.backbones import FeatureCache, FeatureExtractor, compute_features, feature_cache_key
from refad.config import RunConfig
from refad.data import ImageDataset, Sample, samples_fingerprint
from refad.engine.calibrate import calibrate
from refad.engine.checkpoint import (
    CheckpointMeta,
    backbone_identity,
    has_checkpoint,
    load_model,
    load_optimizer,
    read_meta,
    save_checkpoint,
    spec_to_dict,
)
from refad.engine.device import resolve_device
from refad.engine.distributed import DistContext, init_distributed
from refad.engine.steps import (
    STORAGE_DTYPES,
    DeviceFeatures,
    StepHook,
    compiled_loss,
    make_optimizer,
    run_epoch,
)
from refad.engine.units import group_units, load_split, split_validation, unit_dir
from refad.errors import ConfigError
from refad.models.base import FeatureSpec
from refad.models.registry import build_model, method_config

CONFIG_FILE = "config.json"


@dataclass
class UnitResult:
    name: str
    epochs: int
    final_loss: float
    seconds: float


def build_extractor(config: RunConfig, device: torch.device) -> FeatureExtractor:
    b = config.backbone
    weights = None if b.weights == "none" else b.weights
    return FeatureExtractor(
        b.name, levels=b.levels, weights=weights, aggregate_kernel=b.aggregate_kernel
    ).to(device)


def extract_features(
    extractor: FeatureExtractor,
    samples: list[Sample],
    config: RunConfig,
    device: torch.device,
    cache: FeatureCache,
    progress: bool,
) -> list[torch.Tensor]:
    """Backbone levels of `samples` (N, C, H, W), computed once and cached by content key."""
    size = config.data.image_size
    dataset = ImageDataset(samples, size, extractor.mean, extractor.std)
    key = feature_cache_key(extractor, samples_fingerprint(samples), size)
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


def train_unit(
    name: str,
    levels: list[torch.Tensor],
    calib_levels: list[torch.Tensor],
    calib_source: str,
    config: RunConfig,
    extractor: FeatureExtractor,
    run_dir: Path,
    device: torch.device,
    resume: bool,
    progress: bool,
    dctx: DistContext | None = None,
) -> UnitResult:
    """Train one model on cached levels, checkpointing every epoch; calibrate at the end.

    Under torchrun every rank runs this with the same data; each takes its shard of every
    global batch (see `refad.engine.distributed`) and only rank 0 writes files.
    """
    dctx = dctx or DistContext()
    t = config.train
    spec = FeatureSpec(
        levels=tuple(extractor.levels),
        channels=tuple(lvl.shape[1] for lvl in levels),
        shapes=tuple((lvl.shape[2], lvl.shape[3]) for lvl in levels),
        image_size=config.data.image_size,
    )
    folder = unit_dir(run_dir, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = build_model(config.method, spec, config.model).to(device)
    optimizer = make_optimizer(model, config, device)
    loss_fn = compiled_loss(model, t.compile)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history: list[dict[str, float]] = []
    start = 0
    if resume and has_checkpoint(folder):
        loaded, meta = load_model(folder, device)
        model.load_state_dict(loaded.state_dict())
        load_optimizer(folder, optimizer, meta)
        history, start = list(meta.history), meta.epoch
    backbone_info = backbone_identity(extractor, config.data.image_size)
    model_cfg = method_config(config.method, config.model).model_dump()
    features = DeviceFeatures(levels, device, STORAGE_DTYPES[t.feature_storage])
    steps = -(-len(features) // t.batch_size)
    bar = tqdm(
        total=t.epochs * steps, initial=start * steps, desc=f"train {name}", unit="batch",
        disable=not progress,
    )
    t_start = time.perf_counter()
    loss_value = history[-1]["loss"] if history else float("nan")
    for epoch in range(start, t.epochs):
        stats = run_epoch(model, optimizer, features, config, epoch, base_lrs, loss_fn, dctx,
                          on_step=progress_hook(bar, epoch, device))
        loss_value = stats.loss
        history.append({"epoch": epoch + 1, "loss": loss_value, "seconds": stats.seconds})
        meta = CheckpointMeta(
            method=config.method, epoch=epoch + 1, epochs=t.epochs, spec=spec_to_dict(spec),
            backbone=backbone_info, model_config=model_cfg, history=history,
        )
        if dctx.is_main:
            save_checkpoint(folder, model, meta, optimizer)
    bar.close()
    if dctx.is_main:
        meta = read_meta(folder)
        if meta.calibration is None:
            meta.calibration = calibrate(
                model, calib_levels, device, t.feature_batch_size, t.threshold_quantile,
                calib_source,
            )
            save_checkpoint(folder, model, meta, optimizer)
    dctx.barrier()
    return UnitResult(name, t.epochs, loss_value, time.perf_counter() - t_start)


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


def prepare_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """Create the run folder and its config.json; on resume, the saved config is authoritative."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if resume:
        if not cfg_path.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no {CONFIG_FILE})")
        return RunConfig.load(cfg_path)
    if cfg_path.exists():
        raise ConfigError(
            f"{run_dir}: already holds a run; use --resume to continue it or choose another --out"
        )
    method_config(config.method, config.model)  # fail before any work on a bad model section
    config.save(cfg_path)
    return config


def fit(
    config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True
) -> list[UnitResult]:
    """Train a run (unified or per category) into `run_dir`. Returns one result per unit.

    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains data-parallel.
    """
    run_dir = Path(run_dir)
    dctx, device = init_distributed(resolve_device(config.device))
    if dctx.is_main:
        config = prepare_run_dir(config, run_dir, resume)
    dctx.barrier()
    if not dctx.is_main:
        config = RunConfig.load(run_dir / CONFIG_FILE)
    progress = progress and dctx.is_main
    extractor = build_extractor(config, device)
    samples = load_split(config.data, "train")
    train_samples, val_samples = split_validation(
        samples, config.train.val_fraction, config.train.seed
    )
    cache_dir = Path(config.train.feature_cache) if config.train.feature_cache else None
    cache = FeatureCache(cache_dir)
    results = []
    val_units = group_units(config, val_samples) if val_samples else {}
    for name, unit_samples in group_units(config, train_samples).items():
        levels = extract_features(extractor, unit_samples, config, device, cache, progress)
        dctx.barrier()
        if name in val_units:
            calib = extract_features(extractor, val_units[name], config, device, cache, progress)
            source = "validation-normal"
        else:
            calib, source = levels, "train-normal"
        results.append(
            train_unit(name, levels, calib, source, config, extractor, run_dir, device, resume,
                       progress, dctx)
        )
    return results
