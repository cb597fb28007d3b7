"""Training noise under data parallelism: each process draws its rows of the global batch's.

Noise is drawn for the WHOLE global batch from the shared (seed, epoch) generator and sliced,
so N processes together draw exactly what one process with the same global batch draws. It
implements the models' `NoiseSource` protocol, so the models know nothing of sharding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchShard:
    """This process's rows [start, start + rows) of a global batch of `global_size`."""

    generator: torch.Generator
    start: int
    global_size: int

    def normal(
        self, shape: tuple[int, ...] | torch.Size, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        full = torch.randn(
            (self.global_size, *shape[1:]), generator=self.generator, device=device, dtype=dtype
        )
        return full[self.start : self.start + shape[0]]

    def uniform(self, device: torch.device) -> float:
        return torch.rand((), generator=self.generator, device=device).item()
