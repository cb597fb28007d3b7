"""Typed configuration base: unknown keys and wrong types are errors, reported in one line."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from refad.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Pydantic model that forbids unknown fields and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def parse(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
        """Validate `data`, turning pydantic's report into a one-line ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, where)) from None


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """First problem of a pydantic ValidationError as `where: field.path: message (got value)`."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"]) or "(root)"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    return f"{where}: {path}: {err['msg']}{shown}{more}"
