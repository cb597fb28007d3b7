"""Mean distance: each level's normal mean feature, and a patch's squared distance to it."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from refad.models.base import FeatureSpec, OnePassModel, Scores
from refad.models.scoring import gaussian_blur, max_score, upsample_maps


class MeanDistance(OnePassModel):
    """One-pass fit: the running mean of every level's feature vectors."""

    method = "mean_distance"

    def __init__(self, spec: FeatureSpec, config, device: torch.device | str | None = None) -> None:
        super().__init__(spec, config)
        for i, channels in enumerate(spec.channels):
            self.register_buffer(f"mean_{i}", torch.zeros(channels))

    def _mean(self, i: int) -> torch.Tensor:
        return getattr(self, f"mean_{i}")

    def fit(self, batches: Iterable[list[torch.Tensor]], seed: int,
            groups: torch.Tensor | None = None) -> None:
        sums = [torch.zeros_like(self._mean(i), dtype=torch.float64)
                for i in range(len(self.spec.channels))]
        count = [0] * len(sums)
        for levels in batches:
            for i, level in enumerate(levels):
                sums[i] += level.double().sum(dim=(0, 2, 3))
                count[i] += level.shape[0] * level.shape[2] * level.shape[3]
        for i, total in enumerate(sums):
            self._mean(i).copy_((total / max(count[i], 1)).to(self._mean(i).dtype))

    def score(self, levels: list[torch.Tensor]) -> Scores:
        maps = 0
        for i, level in enumerate(levels):
            distance = (level - self._mean(i)[None, :, None, None]).pow(2).mean(dim=1)
            maps = maps + upsample_maps(distance, self.spec.image_size)
        maps = gaussian_blur(maps, self.config.sigma)
        return Scores(maps=maps, image=max_score(maps))
