"""Run configuration: the typed schema, method presets, overrides and config files."""

from refad.config.base import StrictModel, describe_validation_error
from refad.config.build import build_config
from refad.config.methods import (
    METHOD_CONFIGS,
    AttentionImpl,
    AttentionKind,
    CRADConfig,
    ModelConfig,
    RLRConfig,
    UniADConfig,
)
from refad.config.overrides import apply_overrides, load_config_file, parse_override, with_fields
from refad.config.presets import PRESETS, preset
from refad.config.schema import (
    DATA_LAYOUTS,
    DEFAULT_BACKBONE,
    DEFAULT_LEVELS,
    MAX_IMAGE_SIZE,
    BackboneConfig,
    DataConfig,
    FolderData,
    MVTecData,
    RunConfig,
    TrainConfig,
    VisaData,
    check_kernel,
    check_levels,
    shared_train_fields,
)

__all__ = [
    "DATA_LAYOUTS",
    "DEFAULT_BACKBONE",
    "DEFAULT_LEVELS",
    "MAX_IMAGE_SIZE",
    "METHOD_CONFIGS",
    "PRESETS",
    "AttentionImpl",
    "AttentionKind",
    "BackboneConfig",
    "CRADConfig",
    "DataConfig",
    "FolderData",
    "MVTecData",
    "ModelConfig",
    "RLRConfig",
    "RunConfig",
    "StrictModel",
    "TrainConfig",
    "UniADConfig",
    "VisaData",
    "apply_overrides",
    "build_config",
    "check_kernel",
    "check_levels",
    "describe_validation_error",
    "load_config_file",
    "parse_override",
    "preset",
    "shared_train_fields",
    "with_fields",
]
