"""Arguments of the Python API, checked against their type hints before any work.

The CLI's flags reach the config schema through typer; code that calls `refad.api` directly
gets the same care: a wrong type is one line naming the function and the parameter
(`predict: inputs: 'str' instances are not allowed as a Sequence value`), not a traceback
from deep inside, and never a silent reinterpretation (a string iterated as a list of paths).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from refad.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_OPEN = ConfigDict(arbitrary_types_allowed=True)  # torch.device and the like: isinstance


def _adapters(func: Callable[..., Any]) -> dict[str, TypeAdapter[Any]]:
    """A validator per annotated parameter. Hints name types by string (postponed
    annotations); one naming a module not imported (torch in a torch-free install) cannot be
    resolved, and that parameter goes unchecked rather than importing it."""
    namespace = dict(vars(sys.modules[func.__module__]))
    if "torch" in sys.modules:
        namespace.setdefault("torch", sys.modules["torch"])
    adapters = {}
    for name, param in inspect.signature(func).parameters.items():
        hint = param.annotation
        if hint is inspect.Parameter.empty or param.kind in (param.VAR_POSITIONAL,
                                                              param.VAR_KEYWORD):
            continue
        try:
            resolved = eval(hint, namespace) if isinstance(hint, str) else hint
        except NameError:
            continue
        if resolved is Any:
            continue
        own_config = isinstance(resolved, type) and issubclass(resolved, BaseModel)
        adapters[name] = TypeAdapter(resolved, config=None if own_config else _OPEN)
    return adapters


def checked_arguments(func: F) -> F:
    """`func` whose arguments are validated and converted as pydantic's lax mode does
    ("runs/x" becomes a Path for a Path parameter, a dict a RunConfig) before it runs, except
    that a bool is never a number; a bad one is a one-line ConfigError."""
    signature = inspect.signature(func)
    adapters: dict[str, TypeAdapter[Any]] | None = None

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal adapters
        if adapters is None:
            adapters = _adapters(func)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{func.__name__}: {exc}") from None
        for name, value in bound.arguments.items():
            if name not in adapters:
                continue
            try:
                if isinstance(value, bool):  # lax mode reads True as 1: no batch size is True
                    adapters[name].validate_python(value, strict=True)
                bound.arguments[name] = adapters[name].validate_python(value)
            except ValidationError as exc:
                raise ConfigError(f"{func.__name__}: {_where(name, exc)}") from None
        return func(*bound.args, **bound.kwargs)

    return call  # type: ignore[return-value]


def _where(name: str, exc: ValidationError) -> str:
    """`overrides[0]: Input should be a valid string (got int)`: the parameter, the place
    inside it, pydantic's message and the type that was given there."""
    err = exc.errors()[0]
    inner = "".join(f"[{p}]" for p in err["loc"] if isinstance(p, int))  # not union tags
    return f"{name}{inner}: {err['msg']} (got {type(err['input']).__name__})"

