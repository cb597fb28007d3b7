"""Method name -> model class. A new method registers itself here (and its config in
`refad.config.methods`)."""

from __future__ import annotations

from typing import Any

import torch

from refad.config.base import StrictModel
from refad.config.methods import METHOD_CONFIGS
from refad.errors import ConfigError
from refad.models.base import AnomalyModel, FeatureSpec
from refad.models.crad import CRAD
from refad.models.patchcore import PatchCore
from refad.models.rlr import RLR
from refad.models.uniad import UniAD

METHODS: dict[str, type[AnomalyModel]] = {
    "rlr": RLR,
    "uniad": UniAD,
    "crad": CRAD,
    "patchcore": PatchCore,
}


def method_config(method: str, data: dict[str, Any] | StrictModel) -> StrictModel:
    """The method's typed config from a `model` section (a dict, or already typed)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHOD_CONFIGS[method]
    if isinstance(data, cls):
        return data
    if isinstance(data, StrictModel):
        data = data.model_dump()
    return cls.parse({"method": method, **data}, where="model")


def build_model(
    method: str,
    spec: FeatureSpec,
    config: dict[str, Any] | StrictModel,
    device: torch.device | str | None = None,
) -> AnomalyModel:
    """A method's model for `spec`, its parameters drawn on the CPU (the same initial weights
    on every device) and then moved to `device` when given; device-dependent choices (RLR's
    "fast" attention path) are fixed here for that device."""
    cfg = method_config(method, config)
    model = METHODS[method](spec, cfg, device)
    return model if device is None else model.to(device)
