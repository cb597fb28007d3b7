"""Creating a timm model for a backbone: random init drawn from a seed without touching the
global RNG, pretrained weights fetched quietly, and one-line errors for names and levels."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

from refad.errors import CheckpointError, ConfigError


@contextlib.contextmanager
def quiet_logger(name: str, level: int) -> Iterator[None]:
    """Hold back a library's log records below `level` for the duration: offline, the Hugging
    Face hub logged two lines per retry (twenty over 46 s) before the one-line error, and timm
    logs each resampled position table, which a size change makes no news."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def create_timm_model(
    name: str, levels: tuple[int, ...], pretrained: bool, seed: int, **kwargs: Any
) -> nn.Module:
    """`timm.create_model(name, pretrained=..., **kwargs)` with the errors a user can act on."""
    if not timm.is_model(name):
        raise ConfigError(f"backbone.name: {name!r} is not a timm model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with quiet_logger("huggingface_hub", logging.ERROR):
                return timm.create_model(name, pretrained=pretrained, **kwargs)
        except IndexError as exc:
            raise ConfigError(f"backbone.levels: {list(levels)} out of range for {name}") from exc
        except Exception as exc:
            if not pretrained:
                raise
            raise CheckpointError(
                f"timm:{name}: pretrained weights could not be obtained ({type(exc).__name__}); "
                "give a local file instead (refad train --weights FILE; backbone.weights in a "
                "config)"
            ) from exc
