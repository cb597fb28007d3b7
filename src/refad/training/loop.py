"""The training loop on cached features: one implementation for `fit`, DDP and the benchmarks.

The backbone is frozen and there is no augmentation, so a training set's features are held on
the training device once (`DeviceFeatures`; its size for MVTec-AD is in benchmarks/speed.md):
no data loader and no host-to-device copy per step. Randomness comes from generators seeded by
(seed, epoch): the shuffling order on the CPU, the jitter on the training device, dropout from
the global RNG reseeded per epoch. So a resumed run, a DDP run and a single process all replay
the same batches and noise. The loss is summed on the device; the only host synchronisation
is once per epoch (and wherever a progress callback asks for a value).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from refad.config import RunConfig, TrainConfig
from refad.device import amp_active, autocast
from refad.errors import DataError
from refad.models.base import ReconstructionModel
from refad.models.layers.jitter import Noise
from refad.training.distributed import DistContext
from refad.training.noise import BatchShard

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

LossFn = Callable[..., torch.Tensor]
# Called after every optimiser step with (the step's mean loss, detached, and its image count).
StepHook = Callable[[torch.Tensor, int], None]


def compiled_loss(model: ReconstructionModel, mode: str | None) -> LossFn:
    """`model.loss`, through `torch.compile` unless mode is None or "none".

    AOTAutograd compiles the backward too. The jitter draws from a torch.Generator, which
    dynamo does not trace: those draws run eagerly between the compiled pieces, so the noise
    stream (and with it resume and DDP equivalence) is the same as in eager mode.
    """
    if mode is None or mode == "none":
        return model.loss
    compiled = torch.compile(model.loss, mode=mode)

    def step_loss(levels: list[torch.Tensor], generator: Noise = None) -> torch.Tensor:
        # a new step: CUDA-graph modes may now overwrite the previous step's outputs
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(levels, generator=generator)

    return step_loss


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch): the basis of exact resume."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def lr_factor(config: RunConfig, epoch: int) -> float:
    """Step schedule: x lr_gamma from `lr_step_epoch` on (0-based epoch index)."""
    step = config.train.lr_step_epoch
    return config.train.lr_gamma if step is not None and epoch >= step else 1.0


def make_optimizer(
    model: ReconstructionModel, config: RunConfig, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The method's optimiser (its own parameter groups if it has them); fused kernels on CUDA."""
    t = config.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = model.parameter_groups(t.lr) or [{"params": trainable}]
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    extra = {"fused": True} if device is not None and device.type == "cuda" else {}
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, **extra)


class DeviceFeatures:
    """Cached backbone levels held on the training device; batches are gathered there.

    The levels are copied once, optionally in a 16-bit storage dtype; a batch comes back as
    float32, so the model and its jitter see float32 whatever the storage (16-bit storage
    rounds the cached values, nothing else).
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
        """float32 levels of the images at `idx` (indices on any device)."""
        idx = idx.to(self.device)
        return [lvl.index_select(0, idx).float() for lvl in self.levels]


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's images
    images: int
    seconds: float


def _sharded_loss(
    model: ReconstructionModel,
    features: DeviceFeatures,
    idx: torch.Tensor,
    noise: torch.Generator,
    dctx: DistContext,
    loss_fn: LossFn,
) -> tuple[torch.Tensor, int]:
    """Forward/backward this rank's rows of a global batch; returns (their summed loss, rows).

    The local mean loss is weighted by the rank's share of the batch, so the gradients summed
    over ranks equal the gradient of the global batch's mean loss.
    """
    start, stop = dctx.shard(len(idx))
    local = idx[start:stop]
    if len(local):
        loss = loss_fn(features.batch(local), generator=BatchShard(noise, start, len(idx)))
        (loss * (len(local) / len(idx))).backward()
        return loss.detach() * len(local), len(local)
    # this rank drew nothing in a small last batch; the noise stream must still advance
    with torch.no_grad():
        loss_fn(features.batch(idx[:1]), generator=BatchShard(noise, 0, len(idx)))
    return torch.zeros((), device=features.device), 0


@dataclass(frozen=True)
class StepSettings:
    """How the steps of an epoch run (everything but the data, model and optimiser)."""

    batch_size: int
    amp: bool = False
    grad_clip: float | None = None
    loss_fn: LossFn | None = None  # default: model.loss (or its compiled form)
    dctx: DistContext = field(default_factory=DistContext)
    on_step: StepHook | None = None

    @classmethod
    def from_config(cls, train: TrainConfig, **kw: object) -> StepSettings:
        return cls(batch_size=train.batch_size, amp=train.amp, grad_clip=train.grad_clip, **kw)


def train_steps(
    model: ReconstructionModel,
    optimizer: torch.optim.Optimizer,
    features: DeviceFeatures,
    order: torch.Tensor,
    noise: torch.Generator,
    settings: StepSettings,
) -> tuple[torch.Tensor, int]:
    """Optimise over `order` (image indices) in batches; returns (summed loss on device, images).

    Under DDP (`settings.dctx.active`) each rank computes its shard of every global batch and
    the gradients are summed before the step; the returned sum is this rank's part.
    """
    dctx, on_step, batch_size = settings.dctx, settings.on_step, settings.batch_size
    loss_fn = settings.loss_fn or model.loss
    params = [p for p in model.parameters() if p.requires_grad]
    use_amp = amp_active(features.device, settings.amp)
    total = torch.zeros((), device=features.device)
    seen = 0
    for start in range(0, order.numel(), batch_size):
        idx = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        with autocast(features.device, use_amp):
            if dctx.active:
                step_sum, rows = _sharded_loss(model, features, idx, noise, dctx, loss_fn)
            else:
                loss = loss_fn(features.batch(idx), generator=noise)
                loss.backward()
                step_sum, rows = loss.detach() * len(idx), len(idx)
        if dctx.active:
            for p in params:  # every rank must contribute a gradient for every parameter
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            dctx.sum_gradients(params)
        if settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        total += step_sum.float()
        seen += len(idx)
        if on_step is not None:
            on_step(step_sum / max(rows, 1), len(idx))
    return total, seen


def run_epoch(
    model: ReconstructionModel,
    optimizer: torch.optim.Optimizer,
    features: DeviceFeatures,
    config: RunConfig,
    epoch: int,
    base_lrs: Sequence[float],
    settings: StepSettings,
) -> EpochStats:
    """One epoch (0-based index `epoch`): the schedule's lr, the (seed, epoch) order and noise."""
    t = config.train
    device = features.device
    model.train()
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * lr_factor(config, epoch)
    order = torch.randperm(len(features), generator=epoch_generator(t.seed, epoch,
                                                                    torch.device("cpu")))
    noise = epoch_generator(t.seed, epoch, device)
    tic = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(t.seed * 7919 + epoch)  # dropout (UniAD) draws from here
        total, seen = train_steps(model, optimizer, features, order.to(device), noise, settings)
        loss = settings.dctx.sum_scalar(total.item(), device)  # one synchronisation per epoch
    return EpochStats(loss / seen, seen, time.perf_counter() - tic)
