"""Method presets: each paper's backbone, levels, input size, optimiser and schedule."""

from __future__ import annotations

from collections.abc import Callable

from refad.config.methods import CRADConfig, PatchCoreConfig
from refad.config.schema import BackboneConfig, MVTecData, RunConfig, TrainConfig
from refad.errors import ConfigError


def rlr_preset() -> RunConfig:
    """RLR (ECCV 2024), as in the authors' released command."""
    return RunConfig(
        method="rlr",
        data=MVTecData(image_size=256),
        backbone=BackboneConfig(name="tf_efficientnet_b6", levels=[2, 3], aggregate_kernel=3),
        train=TrainConfig(epochs=200, batch_size=4, optimizer="adam", lr=1e-4, seed=3407),
    )


def uniad_preset() -> RunConfig:
    """UniAD (NeurIPS 2022), as in the authors' released MVTec-AD config.

    EfficientNet-B4 stages 1-4 (timm indices 0-3: strides 2-16, 24+32+56+160 channels), no
    local aggregation; AdamW 1e-4 / wd 1e-4, x0.1 at epoch 800 of 1000, batch 8, clip 0.1.
    """
    return RunConfig(
        method="uniad",
        data=MVTecData(image_size=224),
        backbone=BackboneConfig(
            name="tf_efficientnet_b4", levels=[0, 1, 2, 3], aggregate_kernel=1
        ),
        train=TrainConfig(
            epochs=1000, batch_size=8, optimizer="adamw", lr=1e-4, weight_decay=1e-4,
            lr_step_epoch=800, lr_gamma=0.1, grad_clip=0.1, seed=133,
        ),
    )


def crad_preset(expansion: int = 864, seed: int = 2) -> RunConfig:
    """CRAD (ECCV 2024): EfficientNet-B4 stages 3-4 (timm indices 2, 3) at stride 8.

    AdamW with the network at 1e-3 and both grids at 0.1 (`model.grid_lr`), torch's default
    weight decay 0.01 (the authors pass none), x0.1 at epoch 40 of 50, batch 64, clip 0.1.
    """
    return RunConfig(
        method="crad",
        data=MVTecData(image_size=224),
        backbone=BackboneConfig(name="tf_efficientnet_b4", levels=[2, 3], aggregate_kernel=1),
        train=TrainConfig(
            epochs=50, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.01,
            lr_step_epoch=40, lr_gamma=0.1, grad_clip=0.1, seed=seed,
        ),
        model=CRADConfig(expansion=expansion),
    )


def crad_s_preset() -> RunConfig:
    """CRAD-S: CRAD with bottleneck expansion 216 instead of 864 (authors' crad-s config)."""
    return crad_preset(expansion=216, seed=0)


def patchcore_preset() -> RunConfig:
    """PatchCore (CVPR 2022): WideResNet-50 layers 2 and 3 (timm indices 2, 3), 3 x 3
    neighbourhood aggregation, a 1% greedy coreset. Fitted in one pass (`train.epochs` 1);
    10% of the training images are held out to calibrate the thresholds, since the bank's own
    images score near zero."""
    return RunConfig(
        method="patchcore",
        data=MVTecData(image_size=256),
        backbone=BackboneConfig(name="wide_resnet50_2", levels=[2, 3], aggregate_kernel=3),
        train=TrainConfig(epochs=1, batch_size=32, val_fraction=0.1, seed=0),
        model=PatchCoreConfig(embed_dim=1024),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "rlr": rlr_preset,
    "uniad": uniad_preset,
    "crad": crad_preset,
    "crad-s": crad_s_preset,
    "patchcore": patchcore_preset,
}


def preset(method: str) -> RunConfig:
    """The default RunConfig of a method."""
    try:
        return PRESETS[method]()
    except KeyError:
        raise ConfigError(
            f"unknown method {method!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
