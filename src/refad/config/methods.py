"""The `model` section of a run and the method registry it is validated against.

Each method lives in its own folder, `refad.models.<method>`, whose `config.py` defines a
`MethodConfig` subclass and registers it with `register_method` (as a timm model family
registers its models). The registry imports the method folders (`refad.models`) the first
time it is read, so it is complete before any configuration is read, and code that never reads
a configuration (the torch-free deploy path) never loads them; the networks themselves (torch)
load only when a model is built. What used to be written out per method - the union of
configs and its tags, the CLI's method list, export's per-method settings, the tests'
parametrisation - is derived from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field

from refad.config.base import StrictModel
from refad.errors import ConfigError


def odd(v: int) -> int:
    """Validator body shared by every odd-sized window or kernel field."""
    if v % 2 == 0:
        raise ValueError("must be odd")
    return v


# Ranges of the size fields: far above every paper's setting, far below what exhausts memory or
# time (`--set model.local_grid=100000` asked for 6 TB; a width of 0 divided by zero), so a
# typo is one line at validation, before any work. A feature map is at most 2048 / 4 = 512
# tokens a side (data.image_size <= 2048, the finest timm level has stride 2 or 4).
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_WIDTH = 8192  # transformer widths
MAX_MAP_SIDE = 1024  # tokens of a feature-map side (a window table's key)
MAX_WINDOW = 255  # attention / neighbour windows, smoothing kernels (odd)
MAX_POOL = 2048  # image-score pools: no map exceeds the largest input image
GridLevel = Annotated[int, Field(ge=-5, le=4)]  # a position in backbone.levels (<= 5 levels)
Width = Annotated[int, Field(ge=4, le=MAX_WIDTH)]
MapSide = Annotated[int, Field(ge=2, le=MAX_MAP_SIDE)]
Window = Annotated[int, Field(ge=1, le=MAX_WINDOW)]


def divisible_width(width: int, heads: int, field: str) -> None:
    """Heads split a width evenly; a width that does not divide failed in the model build."""
    if width % heads != 0:
        raise ValueError(f"{field} {width} is not divisible by model.num_heads {heads} "
                         "(each head takes an equal share of the width)")


class MethodConfig(StrictModel):
    """Base of every method's `model` section; `method` tells them apart."""

    method: str

    def check_levels(self, levels: list[int]) -> None:
        """Sizes that depend on the backbone levels, checked when the run's config is
        validated rather than when the model is built after feature extraction (minutes into
        a run). Raise ValueError naming the field."""
        grid_level = getattr(self, "grid_level", None)
        if grid_level is not None and not -len(levels) <= grid_level < len(levels):
            raise ValueError(f"model.grid_level: {grid_level} is out of range for "
                             f"{len(levels)} feature level(s) (backbone.levels {levels})")


C = TypeVar("C", bound=type[MethodConfig])


@dataclass(frozen=True)
class MethodEntry:
    """What refad knows of a registered method, torch-free: `model` names the network class
    (`module:Class`), imported only when a model is built."""

    name: str
    config: type[MethodConfig]
    model: str
    summary: str
    # nncf's model type for OpenVINO int8 quantisation (transformers keep attention in fp)
    quantise_as: Literal["transformer"] | None = None
    # `module:FORMAT` of the authors' checkpoint key map, for methods whose authors publish one
    authors: str | None = None
    # the smallest settings that still exercise the method: tests and smoke runs use them
    tiny: Mapping[str, Any] = field(default_factory=dict)


_FOLDERS_IMPORTED: list[bool] = []


def import_method_folders() -> None:
    """Import `refad.models` once, whose method folders register themselves here. Plugin
    discovery, the one import of a higher layer the layering test allows: the configuration
    must know every method, and the methods live in their folders."""
    if not _FOLDERS_IMPORTED:
        _FOLDERS_IMPORTED.append(True)  # before the import: a folder may read the registry
        importlib.import_module("refad.models")


V = TypeVar("V")


class Registry(dict[str, V]):
    """A name -> entry table that the method folders fill: reading it imports them first."""

    def __getitem__(self, key: str) -> V:
        import_method_folders()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        import_method_folders()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        import_method_folders()
        return super().__iter__()

    def __len__(self) -> int:
        import_method_folders()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:
        import_method_folders()
        return super().get(key, default)

    def keys(self) -> Any:
        import_method_folders()
        return super().keys()

    def values(self) -> Any:
        import_method_folders()
        return super().values()

    def items(self) -> Any:
        import_method_folders()
        return super().items()


METHODS: Registry[MethodEntry] = Registry()
METHOD_CONFIGS: Registry[type[MethodConfig]] = Registry()


def register_method(
    name: str,
    *,
    model: str,
    summary: str,
    quantise_as: Literal["transformer"] | None = None,
    authors: str | None = None,
    tiny: Mapping[str, Any] | None = None,
) -> Callable[[C], C]:
    """Class decorator of a method's config: adds the method to the registry."""

    def register(cls: C) -> C:
        known = dict.get(METHODS, name)  # the plain lookup: registering imports no folder
        if known is not None and known.config is not cls:
            raise ConfigError(f"method {name!r} is registered twice")
        METHODS[name] = MethodEntry(name, cls, model, summary, quantise_as, authors,
                                    dict(tiny or {}))
        METHOD_CONFIGS[name] = cls
        return cls

    return register


def method_entry(method: str) -> MethodEntry:
    """The registry entry of `method`, or a one-line error listing the methods there are."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[method]


def model_section(data: Any) -> Any:
    """A `model` section (a mapping with `method`) as its method's typed config; anything
    else is returned for pydantic to refuse."""
    if isinstance(data, MethodConfig) or not isinstance(data, dict):
        return data
    method = data.get("method")
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; available: "
                         f"{', '.join(sorted(METHOD_CONFIGS))}")
    return METHOD_CONFIGS[method].model_validate(data)
