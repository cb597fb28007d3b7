"""Run configuration: the typed schema, method presets, overrides and config files."""

from refad.config.base import StrictModel, describe_validation_error
from refad.config.build import build_config
from refad.config.methods import (
    METHOD_CONFIGS,
    METHODS,
    MethodConfig,
    MethodEntry,
    method_entry,
    register_method,
)
from refad.config.overrides import apply_overrides, load_config_file, parse_override, with_fields
from refad.config.presets import PRESETS, preset, register_preset
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
    TilingConfig,
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
    "METHODS",
    "METHOD_CONFIGS",
    "PRESETS",
    "BackboneConfig",
    "DataConfig",
    "TilingConfig",
    "FolderData",
    "MVTecData",
    "MethodConfig",
    "MethodEntry",
    "RunConfig",
    "StrictModel",
    "TrainConfig",
    "VisaData",
    "apply_overrides",
    "build_config",
    "check_kernel",
    "check_levels",
    "describe_validation_error",
    "load_config_file",
    "method_entry",
    "parse_override",
    "preset",
    "register_method",
    "register_preset",
    "shared_train_fields",
    "with_fields",
]
