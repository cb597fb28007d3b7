"""Fast scoring on the device, and the helpers the speed benchmark shares with it.

Training needs nothing here: `engine.steps` already trains from device-resident cached
features with device-side jitter, fused Adam on CUDA, (with `train.amp`) bf16 autocast and
(with `train.compile`) a compiled loss.
Scoring reconstructs under bf16 autocast (CUDA) but computes the maps, the upsampling, the
Gaussian filter and the max in float32 on the same device, optionally through `torch.compile`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from refad.engine.device import amp_active, autocast
from refad.engine.inference import score_levels
from refad.errors import ConfigError
from refad.models.base import ReconstructionModel, Scores


class FastScorer:
    """Batched scoring on the model's device, from backbone levels or from images.

    Reconstruction runs under bf16 autocast on CUDA (float32 on the CPU); maps, upsampling,
    Gaussian filter and max run in float32 on the same device through the model's
    `score_reconstruction`.
    The backbone (when given) runs in float32 unless `amp_backbone`, so its features equal the
    cached ones. `compile_mode` compiles each whole path with `torch.compile` (e.g. "default";
    "reduce-overhead" adds CUDA graphs, which pays at batch 1).
    """

    def __init__(
        self,
        model: ReconstructionModel,
        device: torch.device,
        amp: bool = True,
        compile_mode: str | None = None,
        extractor: torch.nn.Module | None = None,
        amp_backbone: bool = False,
    ) -> None:
        self.model = model.eval()
        self.extractor = extractor
        self.device = device
        self.amp = amp_active(device, amp)
        self.amp_backbone = amp_active(device, amp_backbone)
        self.compile_mode = compile_mode
        self._levels_fn: Callable[[list[torch.Tensor]], Scores] = self._score_levels
        self._images_fn: Callable[[torch.Tensor], Scores] = self._score_images
        self._warm = compile_mode is None
        if compile_mode is not None:
            self._levels_fn = torch.compile(self._score_levels, mode=compile_mode, dynamic=False)
            self._images_fn = torch.compile(self._score_images, mode=compile_mode, dynamic=False)

    def _score_levels(self, levels: list[torch.Tensor]) -> Scores:
        return score_levels(self.model, levels, self.amp)

    def _score_images(self, images: torch.Tensor) -> Scores:
        if self.extractor is None:
            raise ConfigError("FastScorer: scoring images needs an extractor")
        with autocast(self.device, self.amp_backbone):
            levels = self.extractor(images)
        return self._score_levels([lvl.float() for lvl in levels])

    def _run(self, fn: Callable[[Any], Scores], arg: Any, eager: Callable[[Any], Scores]) -> Scores:
        if not self._warm:  # one eager pass first fills the models' per-dtype mask caches, so
            eager(arg)  # the compiled graph reads them instead of tracing their creation
            self._warm = True
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
        return self._run(self._levels_fn, levels, self._score_levels)

    @torch.inference_mode()
    def images(self, images: torch.Tensor) -> Scores:
        """Normalised images (B, 3, S, S), any device -> Scores (backbone + model + scoring)."""
        images = images.to(self.device, torch.float32, non_blocking=True)
        return self._run(self._images_fn, images, self._score_images)

    def score_cached(self, levels: Sequence[torch.Tensor], batch_size: int) -> Iterator[Scores]:
        """Score cached levels (N, C, H, W) in batches, like `engine.inference.score_cached`."""
        n = levels[0].shape[0]
        for start in range(0, n, batch_size):
            yield self([lvl[start : start + batch_size] for lvl in levels])
