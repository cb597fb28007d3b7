"""The contract every method fulfils, so the engine treats them all alike.

Every method (`AnomalyModel`) turns the frozen backbone's feature levels into `Scores` (a pixel
map and an image score) and says how it is fitted (`fit_kind`):
- "gradient": a `ReconstructionModel` turns the levels into its own *targets* (RLR keeps levels
  apart, UniAD resizes and concatenates them, ...), reconstructs them and defines the training
  loss that the engine's optimiser loop minimises;
- "one_pass": a `OnePassModel` (a memory bank) sees the normal training features once, with no
  optimiser, and keeps what it needs in buffers whose size depends on the data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from refad.errors import CheckpointError
from refad.pipeline.preprocess import as_hw

if TYPE_CHECKING:
    from refad.models.layers.jitter import Noise


@dataclass(frozen=True)
class FeatureSpec:
    """What the backbone delivers: level indices (CNN feature levels or ViT blocks), channels,
    token grid (H_l, W_l) and stride (input pixels per cell) per level, and the input size.

    `image_size` is (height, width); an integer is accepted as a square (what checkpoints and
    callers before (H, W) give). Strides not given (checkpoints written before strides were
    recorded) are derived from the input height and each grid's height.
    """

    levels: tuple[int, ...]
    channels: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]
    image_size: tuple[int, int]
    strides: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        hw = as_hw(self.image_size, "spec.image_size")
        object.__setattr__(self, "image_size", hw)
        if not self.strides:
            derived = tuple(max(1, round(hw[0] / h)) for h, _ in self.shapes)
            object.__setattr__(self, "strides", derived)

    @classmethod
    def of(cls, backbone: Any, image_size: int | Sequence[int]) -> FeatureSpec:
        """The spec of a `refad.backbones.Backbone` at `image_size`, as it describes itself."""
        hw = as_hw(image_size, "image_size")
        return cls(tuple(backbone.levels), tuple(backbone.channels),
                   tuple(backbone.output_shapes(hw)), hw, tuple(backbone.strides))


@dataclass
class Scores:
    """Output of scoring: the pixel map used for pixel metrics and the image score."""

    maps: torch.Tensor  # (B, H, W) at the input resolution
    image: torch.Tensor  # (B,)


FitKind = Literal["gradient", "one_pass"]


class AnomalyModel(nn.Module, ABC):
    """Base class of every method: backbone levels in, `Scores` out (no jitter, eval mode)."""

    method: ClassVar[str]
    fit_kind: ClassVar[FitKind]

    def __init__(self, spec: FeatureSpec, config: Any) -> None:
        super().__init__()
        self.spec = spec
        self.config = config

    @abstractmethod
    def score(self, levels: list[torch.Tensor]) -> Scores:
        """Pixel anomaly maps at the input size and image scores."""

    def adopt_state_shapes(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Resize data-sized buffers (a memory bank) to a stored state before a strict load.

        Most methods have a fixed shape per spec and config: nothing to do.
        """


class OnePassModel(AnomalyModel):
    """A method fitted in one pass over the normal training features, without an optimiser."""

    fit_kind: ClassVar[FitKind] = "one_pass"

    @abstractmethod
    def fit(self, batches: Iterable[list[torch.Tensor]], seed: int,
            groups: torch.Tensor | None = None) -> None:
        """Take in batches of normal training levels (each (B, C_l, H_l, W_l)), seen once.
        `groups` (optional) holds one integer per image (or tile) in batch order: which
        product it shows, for a method that keeps products apart; others ignore it."""


class ReconstructionModel(AnomalyModel):
    """A method that reconstructs features and is trained by gradient on its `loss`."""

    fit_kind: ClassVar[FitKind] = "gradient"

    @abstractmethod
    def targets(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone levels (B, C_l, H_l, W_l) -> what this method reconstructs."""

    @abstractmethod
    def reconstruct(
        self, targets: list[torch.Tensor], generator: Noise = None
    ) -> list[torch.Tensor]:
        """Reconstruct targets; in training mode the method's input jitter is drawn."""

    @abstractmethod
    def loss(
        self, levels: list[torch.Tensor], generator: Noise = None
    ) -> torch.Tensor:
        """Scalar training loss for a batch of backbone levels."""

    @abstractmethod
    def score_reconstruction(
        self, targets: list[torch.Tensor], recs: list[torch.Tensor]
    ) -> Scores:
        """The method's map and image-score rules on targets and their reconstructions.

        Split from `score` so that a caller can reconstruct under autocast and still score in
        float32 (upsampling, smoothing and the max are sensitive to bf16 rounding).
        """

    def parameter_groups(self, lr: float) -> list[dict[str, Any]] | None:
        """Optimiser parameter groups with their own learning rates; None: one group at `lr`."""
        return None

    def score(self, levels: list[torch.Tensor]) -> Scores:
        """Pixel anomaly maps at the input size and image scores (no jitter)."""
        targets = self.targets(levels)
        return self.score_reconstruction(targets, self.reconstruct(targets))


def load_state_checked(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, hint: str = ""
) -> None:
    """Load `state` strictly, naming the first missing, unexpected or mis-shaped key.

    torch's own strict-load error lists every key in several lines; users get one line with
    the file (`where`) and the first problem instead.
    """
    if isinstance(model, AnomalyModel):
        model.adopt_state_shapes(state, where)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: no weights for the model's {missing[0]!r}{hint}")
    if unexpected:
        raise CheckpointError(f"{where}: {unexpected[0]!r} has no place in the model{hint}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(expected[key].shape)}{hint}"
            )
    model.load_state_dict(state, strict=True)
