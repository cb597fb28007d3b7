"""Exceptions that the CLI turns into one-line messages and a non-zero exit."""

from __future__ import annotations


class RefadError(Exception):
    """Base class for every error refad reports to a user (one clear line, no traceback)."""


class DataError(RefadError):
    """A dataset, image or mask is missing, unreadable or inconsistent. Message names the file."""


class ConfigError(RefadError):
    """A configuration value is invalid."""


class CheckpointError(RefadError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class TrainingError(RefadError):
    """Training cannot go on (e.g. the loss diverged); the last complete epoch stays saved."""


def require_at_least_one(name: str, value: int) -> None:
    """A count below 1 would silently do nothing (a batch size of -1 scored no image): the
    check every command and API entry shares, here so the light CLI start-up can use it."""
    if value < 1:
        raise ConfigError(f"{name}: must be at least 1, got {value}")
