"""Feature jitter: token-scaled Gaussian noise on the model input (never on the target)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchShard:
    """This process's rows of a global batch, for data-parallel training.

    Noise is drawn for the WHOLE global batch from the shared generator and sliced, so N
    processes together draw exactly what one process with the same global batch draws.
    """

    generator: torch.Generator
    start: int
    global_size: int


Noise = torch.Generator | BatchShard | None


def draw_normal(
    shape: tuple[int, ...] | torch.Size,
    noise: Noise,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) samples of `shape` (leading dim = batch), shard-aware."""
    if isinstance(noise, BatchShard):
        full = torch.randn(
            (noise.global_size, *shape[1:]), generator=noise.generator, device=device, dtype=dtype
        )
        return full[noise.start : noise.start + shape[0]]
    return torch.randn(tuple(shape), generator=noise, device=device, dtype=dtype)


def draw_uniform(noise: Noise, device: torch.device) -> float:
    """One U(0, 1) draw shared by every shard (a whole-batch decision)."""
    gen = noise.generator if isinstance(noise, BatchShard) else noise
    return torch.rand((), generator=gen, device=device).item()


def feature_jitter(
    tokens: torch.Tensor,
    scale: float,
    probability: float = 1.0,
    generator: Noise = None,
) -> torch.Tensor:
    """Return tokens + eps * (||token||_2 / C) * scale, eps ~ N(0, 1) per element.

    `tokens` is (..., N, C). With probability < 1 the jitter is applied to the whole batch or
    not at all, as in UniAD. A generator makes the draw reproducible (resume, determinism); a
    BatchShard makes it identical under data-parallel training.
    """
    if scale <= 0:
        return tokens
    if probability < 1.0 and draw_uniform(generator, tokens.device) >= probability:
        return tokens
    channels = tokens.shape[-1]
    norm = tokens.norm(dim=-1, keepdim=True) / channels
    noise = draw_normal(tokens.shape, generator, tokens.device, tokens.dtype)
    return tokens + noise * norm * scale
