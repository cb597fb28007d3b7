"""Method name -> (model class, config class). A new method registers itself here."""

from __future__ import annotations

from typing import Any

from refad.config_base import StrictModel
from refad.errors import ConfigError
from refad.models.base import FeatureSpec, ReconstructionModel
from refad.models.crad import CRAD, CRADConfig
from refad.models.rlr import RLR, RLRConfig
from refad.models.uniad import UniAD, UniADConfig

METHODS: dict[str, tuple[type[ReconstructionModel], type[StrictModel]]] = {
    "rlr": (RLR, RLRConfig),
    "uniad": (UniAD, UniADConfig),
    "crad": (CRAD, CRADConfig),
}


def method_config(method: str, data: dict[str, Any]) -> StrictModel:
    """Validate the `model` section of a run config against the method's own config class."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[method][1].parse(data, where="model")


def build_model(method: str, spec: FeatureSpec, data: dict[str, Any]) -> ReconstructionModel:
    """Instantiate a method's model for the given feature spec (on the CPU, caller moves it)."""
    cfg = method_config(method, data)
    return METHODS[method][0](spec, cfg)
