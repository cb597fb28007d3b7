"""PatchCore: a training-free memory bank of normal patch features (one pass, no optimiser)."""

from refad.models.patchcore.model import PatchCore

__all__ = ["PatchCore"]
