"""Fast paths: training on device-resident cached features, and batched scoring on the device.

The backbone is frozen and there is no augmentation, so a whole training set's features fit on
one GPU (MVTec-AD, B6, levels [2, 3]: about 1 GB in fp16). Keeping them there removes the data
loader and the host-to-device copy from every step; the jitter is drawn on the device from the
same (seed, epoch) generators as `engine.train`, and the shuffling order is the same, so a
float32 run on the CPU matches the plain loop step for step. On CUDA the step runs under bf16
autocast with a fused Adam; on the CPU everything stays float32.

Scoring reconstructs under bf16 autocast (CUDA) but computes the maps, the upsampling, the
Gaussian filter and the max in float32 on the same device, optionally through `torch.compile`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from refad.config import RunConfig
from refad.engine.train import UnitResult, epoch_generator, lr_factor
from refad.errors import ConfigError, DataError
from refad.models.base import ReconstructionModel, Scores

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Called after every epoch with (epochs done, history, model, optimizer): checkpointing hook.
History = list[dict[str, float]]
LossFn = Callable[..., torch.Tensor]
EpochHook = Callable[[int, History, ReconstructionModel, torch.optim.Optimizer], None]


@dataclass(frozen=True)
class FastOptions:
    """Switches of the fast path. Defaults are what the GPU benchmark uses."""

    amp: bool = True  # bf16 autocast on CUDA; ignored (float32) on the CPU
    storage: str = "float32"  # dtype of the cached features on the device ("float16" halves it)
    fused: bool = True  # fused Adam on CUDA
    compile_mode: str | None = None  # torch.compile mode for scoring; None: eager
    compile_train: str | None = None  # torch.compile mode for the training loss; None: eager

    def __post_init__(self) -> None:
        if self.storage not in STORAGE_DTYPES:
            raise ConfigError(
                f"fast.storage: {self.storage!r} is not one of {', '.join(STORAGE_DTYPES)}"
            )


def amp_active(device: torch.device, amp: bool) -> bool:
    """bf16 autocast only where it pays and is the intended numerics: CUDA devices."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class DeviceFeatures:
    """Cached backbone levels held on the device; batches are gathered there.

    The levels are copied to the device once, optionally in a 16-bit storage dtype; a batch is
    converted back to float32, so the model and its jitter see the same dtype as with the
    plain loader (fp16 storage rounds the cached values, nothing else).
    """

    def __init__(
        self,
        levels: Sequence[torch.Tensor],
        device: torch.device,
        storage: torch.dtype = torch.float32,
    ) -> None:
        if not levels:
            raise DataError("feature cache: no feature levels to train on")
        n = levels[0].shape[0]
        if any(lvl.shape[0] != n for lvl in levels):
            counts = [lvl.shape[0] for lvl in levels]
            raise DataError(f"feature cache: levels hold different image counts {counts}")
        self.device = device
        self.levels = [lvl.to(device=device, dtype=storage) for lvl in levels]

    def __len__(self) -> int:
        return self.levels[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(lvl.numel() * lvl.element_size() for lvl in self.levels)

    def batch(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """float32 levels of the images at `idx` (a device tensor of indices)."""
        return [lvl.index_select(0, idx).float() for lvl in self.levels]


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's images
    images: int
    seconds: float


def make_fast_optimizer(
    model: ReconstructionModel, config: RunConfig, device: torch.device, fused: bool = True
) -> torch.optim.Optimizer:
    """`engine.train.make_optimizer`'s optimizer, with fused kernels on CUDA (same update rule)."""
    t = config.train
    params = model.parameter_groups(t.lr) if hasattr(model, "parameter_groups") else None
    params = params or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    extra = {"fused": True} if fused and device.type == "cuda" else {}
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, **extra)


def compiled_loss(model: ReconstructionModel, mode: str | None) -> LossFn:
    """`model.loss`, through `torch.compile` when a mode is given.

    The jitter draws from a torch.Generator, which dynamo does not trace: it runs eagerly
    between compiled pieces (same values, same generator stream).
    """
    if mode is None:
        return model.loss
    return torch.compile(model.loss, mode=mode)


def train_steps(
    model: ReconstructionModel,
    optimizer: torch.optim.Optimizer,
    features: DeviceFeatures,
    order: torch.Tensor,
    noise: torch.Generator,
    batch_size: int,
    amp: bool,
    grad_clip: float | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[torch.Tensor, int]:
    """Optimise over `order` (device indices) in batches. Returns (summed loss on device, images).

    No host synchronisation inside the loop: the loss is accumulated on the device. `loss_fn`
    replaces `model.loss` (e.g. a compiled version of it).
    """
    loss_fn = loss_fn or model.loss
    use_amp = amp_active(features.device, amp)
    total = torch.zeros((), device=features.device)
    seen = 0
    for start in range(0, order.numel(), batch_size):
        idx = order[start : start + batch_size]
        batch = features.batch(idx)
        with autocast(features.device, use_amp):
            loss = loss_fn(batch, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach().float() * idx.numel()
        seen += idx.numel()
    return total, seen


def train_epoch(
    model: ReconstructionModel,
    optimizer: torch.optim.Optimizer,
    features: DeviceFeatures,
    config: RunConfig,
    epoch: int,
    base_lrs: Sequence[float],
    amp: bool = True,
    loss_fn: LossFn | None = None,
) -> EpochStats:
    """One epoch (0-based index `epoch`) with `engine.train`'s order, noise and dropout seeds."""
    t = config.train
    device = features.device
    model.train()
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * lr_factor(config, epoch)
    cpu = torch.device("cpu")
    order = torch.randperm(len(features), generator=epoch_generator(t.seed, epoch, cpu))
    order = order.to(device)
    noise = epoch_generator(t.seed, epoch, device)
    tic = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(t.seed * 7919 + epoch)  # dropout draws (UniAD), as in engine.train
        total, seen = train_steps(
            model, optimizer, features, order, noise, t.batch_size, amp, t.grad_clip, loss_fn
        )
        loss = total.item()  # the one synchronisation per epoch
    return EpochStats(loss / seen, seen, time.perf_counter() - tic)


def train_fast(
    name: str,
    model: ReconstructionModel,
    levels: Sequence[torch.Tensor],
    config: RunConfig,
    device: torch.device,
    options: FastOptions | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    base_lrs: Sequence[float] | None = None,
    start_epoch: int = 0,
    history: History | None = None,
    on_epoch: EpochHook | None = None,
) -> UnitResult:
    """Train `model` (already on `device`) for epochs start_epoch..config.train.epochs-1.

    `levels` are the cached (N, C, H, W) features (any device); they are moved to `device`
    once. For a resumed run pass the restored optimizer, the base learning rates it was made
    with, the epoch to start from and the history so far. `on_epoch` is where a caller saves
    checkpoints; this function writes nothing.
    """
    options = options or FastOptions()
    features = DeviceFeatures(levels, device, STORAGE_DTYPES[options.storage])
    if optimizer is None:
        optimizer = make_fast_optimizer(model, config, device, options.fused)
    if base_lrs is None:
        base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_fn = compiled_loss(model, options.compile_train)
    history = list(history or [])
    t_start = time.perf_counter()
    loss = history[-1]["loss"] if history else float("nan")
    for epoch in range(start_epoch, config.train.epochs):
        stats = train_epoch(
            model, optimizer, features, config, epoch, base_lrs, options.amp, loss_fn
        )
        loss = stats.loss
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": stats.seconds})
        if on_epoch is not None:
            on_epoch(epoch + 1, history, model, optimizer)
    return UnitResult(name, config.train.epochs, loss, time.perf_counter() - t_start)


class FastScorer:
    """Batched scoring on the model's device, from backbone levels or from images.

    Reconstruction runs under bf16 autocast on CUDA (float32 on the CPU); maps, upsampling,
    Gaussian filter and max run in float32 on the same device through the model's
    `score_reconstruction` (models without it are scored by their own `score`, in float32).
    The backbone (when given) runs in float32 unless `amp_backbone`, so its features equal the
    cached ones. `compile_mode` compiles each whole path with `torch.compile` (e.g. "default";
    "reduce-overhead" adds CUDA graphs, which pays at batch 1).
    """

    def __init__(
        self,
        model: ReconstructionModel,
        device: torch.device,
        amp: bool = True,
        compile_mode: str | None = None,
        extractor: torch.nn.Module | None = None,
        amp_backbone: bool = False,
    ) -> None:
        self.model = model.eval()
        self.extractor = extractor
        self.device = device
        self.amp = amp_active(device, amp)
        self.amp_backbone = amp_active(device, amp_backbone)
        self.compile_mode = compile_mode
        self._levels_fn: Callable[[list[torch.Tensor]], Scores] = self._score_levels
        self._images_fn: Callable[[torch.Tensor], Scores] = self._score_images
        self._warm = compile_mode is None
        if compile_mode is not None:
            self._levels_fn = torch.compile(self._score_levels, mode=compile_mode, dynamic=False)
            self._images_fn = torch.compile(self._score_images, mode=compile_mode, dynamic=False)

    def _score_levels(self, levels: list[torch.Tensor]) -> Scores:
        finish = getattr(self.model, "score_reconstruction", None)
        if finish is None:
            return self.model.score(levels)
        targets = self.model.targets(levels)
        with autocast(self.device, self.amp):
            recs = self.model.reconstruct(targets)
        return finish(targets, [r.float() for r in recs])

    def _score_images(self, images: torch.Tensor) -> Scores:
        if self.extractor is None:
            raise ConfigError("FastScorer: scoring images needs an extractor")
        with autocast(self.device, self.amp_backbone):
            levels = self.extractor(images)
        return self._score_levels([lvl.float() for lvl in levels])

    def _run(self, fn: Callable[[Any], Scores], arg: Any, eager: Callable[[Any], Scores]) -> Scores:
        if not self._warm:  # one eager pass first fills the models' per-dtype mask caches, so
            eager(arg)  # the compiled graph reads them instead of tracing their creation
            self._warm = True
        graphs = self.compile_mode is not None and "reduce-overhead" in self.compile_mode
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        scores = fn(arg)
        if graphs:  # CUDA-graph outputs are overwritten by the next call
            scores = Scores(maps=scores.maps.clone(), image=scores.image.clone())
        return scores

    @torch.inference_mode()
    def __call__(self, levels: Sequence[torch.Tensor]) -> Scores:
        """Backbone levels (B, C, H, W), any device -> Scores on this scorer's device."""
        levels = [lvl.to(self.device, torch.float32, non_blocking=True) for lvl in levels]
        return self._run(self._levels_fn, levels, self._score_levels)

    @torch.inference_mode()
    def images(self, images: torch.Tensor) -> Scores:
        """Normalised images (B, 3, S, S), any device -> Scores (backbone + model + scoring)."""
        images = images.to(self.device, torch.float32, non_blocking=True)
        return self._run(self._images_fn, images, self._score_images)

    def score_cached(self, levels: Sequence[torch.Tensor], batch_size: int) -> Iterator[Scores]:
        """Score cached levels (N, C, H, W) in batches, like `engine.inference.score_cached`."""
        n = levels[0].shape[0]
        for start in range(0, n, batch_size):
            yield self([lvl[start : start + batch_size] for lvl in levels])
