"""The one scoring path of refad: calibration, evaluation, prediction, serving, export and the
speed benchmark all score through `Scorer`.

Reconstruction may run under bf16 autocast on CUDA (`amp`; ignored on the CPU, which stays
float32); the maps, the upsampling, the Gaussian filter and the max always run in float32 on
the same device, through the model's `score_reconstruction` (they are sensitive to bf16
rounding). `compile_mode` puts each whole path through `torch.compile`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from refad.device import amp_active, autocast
from refad.errors import ConfigError
from refad.models.base import AnomalyModel, ReconstructionModel, Scores

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def score_levels(
    model: AnomalyModel, levels: list[torch.Tensor], amp: bool = False
) -> Scores:
    """The scoring step itself: backbone levels on the model's device -> maps and scores.

    Only a reconstruction runs under autocast; a memory bank's distances stay float32 (their
    nearest neighbour would change with bf16 rounding)."""
    device = levels[0].device
    if not amp_active(device, amp) or not isinstance(model, ReconstructionModel):
        return model.score(levels)
    targets = model.targets(levels)
    with autocast(device, True):
        recs = model.reconstruct(targets)
    return model.score_reconstruction(targets, [r.float() for r in recs])


def describe_scoring(device: torch.device | str, amp: bool) -> str:
    """'pytorch on cpu', 'pytorch on cuda:0 with bf16 autocast': `amp` as it takes effect."""
    device = torch.device(device)
    return f"pytorch on {device}" + (" with bf16 autocast" if amp_active(device, amp) else "")


class Scorer:
    """Batched scoring on one device, from backbone levels or from normalised images.

    The backbone (when given) runs in float32 unless `amp_backbone`, so its features equal
    the cached training features. `compile_mode` ("none"/None: eager; "default";
    "reduce-overhead" adds CUDA graphs, which pays at batch 1 on a GPU) is fixed here.
    """

    def __init__(
        self,
        model: AnomalyModel,
        device: torch.device | str,
        extractor: torch.nn.Module | None = None,
        amp: bool = False,
        compile_mode: str | None = None,
        amp_backbone: bool = False,
    ) -> None:
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"compile: {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}"
            )
        self.device = torch.device(device)
        self.model = model.eval()
        self.extractor = extractor
        self.amp = amp_active(self.device, amp)
        self.amp_backbone = amp_active(self.device, amp_backbone)
        self.compile_mode = None if compile_mode == "none" else compile_mode
        self._levels_fn: Callable[[list[torch.Tensor]], Scores] = self._score_levels
        self._images_fn: Callable[[torch.Tensor], Scores] = self._score_images
        if self.compile_mode is not None:
            self._levels_fn = torch.compile(
                self._score_levels, mode=self.compile_mode, dynamic=False
            )
            self._images_fn = torch.compile(
                self._score_images, mode=self.compile_mode, dynamic=False
            )

    @property
    def scored_with(self) -> str:
        """What computes the scores, in words (predictions.json, the server's model card)."""
        return describe_scoring(self.device, self.amp)

    def _score_levels(self, levels: list[torch.Tensor]) -> Scores:
        return score_levels(self.model, levels, self.amp)

    def _score_images(self, images: torch.Tensor) -> Scores:
        if self.extractor is None:
            raise ConfigError("Scorer: scoring images needs an extractor")
        with autocast(self.device, self.amp_backbone):
            levels = self.extractor(images)
        return self._score_levels([lvl.float() for lvl in levels])

    def _run(self, fn: Callable[[Any], Scores], arg: Any) -> Scores:
        graphs = self.compile_mode is not None and "reduce-overhead" in self.compile_mode
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        scores = fn(arg)
        if graphs:  # CUDA-graph outputs are overwritten by the next call
            scores = Scores(maps=scores.maps.clone(), image=scores.image.clone())
        return scores

    @torch.inference_mode()
    def __call__(self, levels: Sequence[torch.Tensor]) -> Scores:
        """Backbone levels (B, C, H, W), any device -> Scores on this scorer's device."""
        levels = [lvl.to(self.device, torch.float32, non_blocking=True) for lvl in levels]
        return self._run(self._levels_fn, levels)

    @torch.inference_mode()
    def images(self, images: torch.Tensor) -> Scores:
        """Normalised images (B, 3, S, S), any device -> Scores (backbone + model + maps)."""
        images = images.to(self.device, torch.float32, non_blocking=True)
        return self._run(self._images_fn, images)

    def tiles(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed (n, 3, th, tw) float32 tiles -> (maps, scores) as numpy: the
        `score_tiles` of `refad.pipeline.tiled.score_tiled`, as an export's graph is."""
        scores = self.images(torch.from_numpy(batch))
        return scores.maps.float().cpu().numpy(), scores.image.float().cpu().numpy()

    def score_cached(self, levels: Sequence[torch.Tensor], batch_size: int) -> Iterator[Scores]:
        """Score cached levels (N, C, H, W) in batches of `batch_size`."""
        n = levels[0].shape[0]
        for start in range(0, n, batch_size):
            yield self([lvl[start : start + batch_size] for lvl in levels])
