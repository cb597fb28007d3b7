"""Device choice: the caller decides; "auto" means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from refad.errors import ConfigError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """Turn "auto" / "cpu" / "cuda[:N]" into a torch.device, failing clearly if unavailable."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device: {name!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA GPU is available")
    return device
