"""Device choice: the caller decides; "auto" means CUDA when present, else CPU."""

from __future__ import annotations

import contextlib
import os

import torch

from refad.errors import ConfigError


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_cpu_threads() -> int:
    """Intra-op threads = usable cores, unless the user chose (OMP_NUM_THREADS / MKL_NUM_THREADS).

    torch's default counts the machine's physical cores, which oversubscribes a process that
    is restricted to fewer (containers, taskset, CI runners).
    """
    if not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        torch.set_num_threads(cpu_threads())
    return torch.get_num_threads()


def amp_active(device: torch.device, amp: bool) -> bool:
    """bf16 autocast only where it pays and is the intended numerics: CUDA devices."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


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
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not supported (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA GPU is available")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {name!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist"
        )
    return device
