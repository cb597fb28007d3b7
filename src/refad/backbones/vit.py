"""Vision-transformer backbones: the patch tokens of chosen blocks, on the patch grid.

`levels` are block indices (0 = the first block's output). timm's ``forward_intermediates``
returns each chosen block's tokens without the class and register tokens, reshaped to
(B, C, H / patch, W / patch); blocks after the deepest chosen one are dropped, like the unused
stages of a CNN. The intermediates are taken before the final norm (dropped with the head).

Any input whose sides are multiples of the patch size works, whatever size the weights were
trained at (224, 518): when a batch of another size arrives, the position table of the weights is
resampled once to its grid with timm's `set_input_size` (what timm's dynamic image size does in
every forward; done per size instead because ONNX cannot export the antialiased bicubic
resample, and an export then holds the table as a constant). Other sizes are refused in one line
naming data.image_size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from refad.backbones.base import Backbone
from refad.backbones.create import create_timm_model, quiet_logger
from refad.backbones.weights import load_into, resolve_weights
from refad.errors import ConfigError

DEFAULT_BLOCKS: tuple[int, ...] = (5, 8)


class VitBackbone(Backbone):
    """Frozen timm ViT returning the aggregated patch-token grids of blocks ``levels``.

    ``weights`` as for the CNN backbone ("auto": timm download; "none": random init from
    ``seed``; or a file of timm-named weights).
    """

    kind: ClassVar[str] = "vit"

    def __init__(
        self,
        name: str,
        levels: Sequence[int] = DEFAULT_BLOCKS,
        weights: str | Path | None = "auto",
        aggregate_kernel: int = 3,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(name, levels, aggregate_kernel)
        resolved = resolve_weights(name, weights, seed)
        try:
            model = create_timm_model(
                name, self.levels, resolved.timm_pretrained, seed, dynamic_img_pad=False
            )
        except TypeError:  # a CNN's constructor has no dynamic_img_pad
            model = None
        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"backbone.kind: {name} is not a timm vision transformer; "
                              "set backbone.kind=cnn")
        depth = len(model.blocks)
        if self.levels[-1] >= depth:
            raise ConfigError(f"backbone.levels: {list(self.levels)} out of range for {name} "
                              f"(blocks 0..{depth - 1})")
        patch = tuple(model.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ConfigError(f"backbone.name: {name} has non-square {patch} patches")
        model.prune_intermediate_layers(list(self.levels), prune_norm=True, prune_head=True)
        self.model = model
        if resolved.state_dict is not None:  # after pruning: late blocks and head are not needed
            load_into(self.model, name, resolved.state_dict, resolved.source)
        # the weights' own position table and input size: every other size is resampled from it
        self.register_buffer("pos_table", model.pos_embed.detach().clone(), persistent=False)
        self.table_size = tuple(model.patch_embed.img_size)
        self.input_size = self.table_size
        self.size_step = int(patch[0])
        self.channels = [int(model.embed_dim)] * len(self.levels)
        self.strides = [self.size_step] * len(self.levels)
        self.finish_build(resolved)

    def use_input_size(self, size: int | Sequence[int]) -> None:
        """Resample the weights' position table to the grid of ``size`` (a no-op when the
        model already takes it); always from the original table, never a resampled one."""
        hw = self.check_image_size(size)
        if hw == self.input_size:
            return
        model = self.model
        model.pos_embed = nn.Parameter(self.pos_table.clone(), requires_grad=False)
        model.patch_embed.set_input_size(img_size=self.table_size)
        with quiet_logger("timm.layers.pos_embed", logging.WARNING):
            model.set_input_size(img_size=hw)
        self.input_size = hw

    def raw_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.use_input_size((int(images.shape[-2]), int(images.shape[-1])))
        return list(self.model.forward_intermediates(
            images, indices=list(self.levels), norm=False, output_fmt="NCHW",
            intermediates_only=True,
        ))
