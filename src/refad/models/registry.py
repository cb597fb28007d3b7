"""Method name -> network: the registry of `refad.config.methods` (filled by the method
folders) resolved to model classes, and `build_model`."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from refad.config.base import StrictModel
from refad.config.methods import METHODS, method_entry
from refad.errors import ConfigError
from refad.models.base import AnomalyModel, FeatureSpec


def model_class(method: str) -> type[AnomalyModel]:
    """The network class a method registered (`module:Class`), imported on first use."""
    module, _, name = method_entry(method).model.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise ConfigError(f"method {method!r}: {module}:{name} is not an AnomalyModel")
    return cls


def method_names() -> list[str]:
    """Every registered method, sorted."""
    return sorted(METHODS)


def method_config(method: str, data: dict[str, Any] | StrictModel) -> StrictModel:
    """The method's typed config from a `model` section (a dict, or already typed)."""
    cls = method_entry(method).config
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
    model = model_class(method)(spec, cfg, device)
    return model if device is None else model.to(device)
