"""Feature jitter: token-scaled Gaussian noise on the model input (never on the target)."""

from __future__ import annotations

from typing import Protocol

import torch


class NoiseSource(Protocol):
    """A source of training noise other than a plain generator.

    The training loop passes one under data-parallel training, where each process must draw
    its own rows of the noise of the whole global batch (`refad.training.noise.BatchShard`).
    """

    def normal(
        self, shape: tuple[int, ...] | torch.Size, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """N(0, 1) samples of `shape` (leading dim = this process's rows of the batch)."""

    def uniform(self, device: torch.device) -> float:
        """One U(0, 1) draw shared by the whole batch."""


Noise = torch.Generator | NoiseSource | None


def draw_normal(
    shape: tuple[int, ...] | torch.Size,
    noise: Noise,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) samples of `shape` (leading dim = batch) from a generator or a noise source."""
    if noise is None or isinstance(noise, torch.Generator):
        return torch.randn(tuple(shape), generator=noise, device=device, dtype=dtype)
    return noise.normal(shape, device, dtype)


def draw_uniform(noise: Noise, device: torch.device) -> float:
    """One U(0, 1) draw for a whole-batch decision."""
    if noise is None or isinstance(noise, torch.Generator):
        return torch.rand((), generator=noise, device=device).item()
    return noise.uniform(device)


def feature_jitter(
    tokens: torch.Tensor,
    scale: float,
    probability: float = 1.0,
    generator: Noise = None,
) -> torch.Tensor:
    """Return tokens + eps * (||token||_2 / C) * scale, eps ~ N(0, 1) per element.

    `tokens` is (..., N, C). With probability < 1 the jitter is applied to the whole batch or
    not at all, as in UniAD. A generator makes the draw reproducible (resume, determinism); a
    NoiseSource from the training loop makes it identical under data-parallel training.
    """
    if scale <= 0:
        return tokens
    if probability < 1.0 and draw_uniform(generator, tokens.device) >= probability:
        return tokens
    channels = tokens.shape[-1]
    norm = tokens.norm(dim=-1, keepdim=True) / channels
    noise = draw_normal(tokens.shape, generator, tokens.device, tokens.dtype)
    return tokens + noise * norm * scale
