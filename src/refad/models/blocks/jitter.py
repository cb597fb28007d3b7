"""Feature jitter: token-scaled Gaussian noise on the model input (never on the target)."""

from __future__ import annotations

import torch


def feature_jitter(
    tokens: torch.Tensor,
    scale: float,
    probability: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return tokens + eps * (||token||_2 / C) * scale, eps ~ N(0, 1) per element.

    `tokens` is (..., N, C). With probability < 1 the jitter is applied to the whole batch or
    not at all, as in UniAD. A generator makes the draw reproducible (resume, determinism).
    """
    if scale <= 0:
        return tokens
    if probability < 1.0:
        draw = torch.rand((), generator=generator, device=tokens.device)
        if draw.item() >= probability:
            return tokens
    channels = tokens.shape[-1]
    norm = tokens.norm(dim=-1, keepdim=True) / channels
    noise = torch.randn(
        tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype
    )
    return tokens + noise * norm * scale
