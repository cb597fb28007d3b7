"""Method presets: each paper's backbone, levels, input size, optimiser and schedule.

A method folder registers its presets (`register_preset`); a method has at least the preset
of its own name, and may have variants (CRAD-S is a preset of CRAD)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from refad.config.methods import Registry
from refad.config.schema import RunConfig
from refad.errors import ConfigError

PRESETS: Registry[Callable[[], RunConfig]] = Registry()  # filled by the method folders
F = TypeVar("F", bound=Callable[[], RunConfig])


def register_preset(name: str) -> Callable[[F], F]:
    """Function decorator: `name` (a method, or a variant of one) gives this RunConfig."""

    def register(make: F) -> F:
        if dict.get(PRESETS, name) not in (None, make):  # plain lookup: imports no folder
            raise ConfigError(f"preset {name!r} is registered twice")
        PRESETS[name] = make
        return make

    return register


def preset(method: str) -> RunConfig:
    """The default RunConfig of a method (or of a named variant)."""
    try:
        make = PRESETS[method]
    except KeyError:
        raise ConfigError(
            f"unknown method {method!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
    return make()
