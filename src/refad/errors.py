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
