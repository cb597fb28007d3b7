"""Typed configuration base: unknown keys and wrong types are errors, reported in one line."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from refad.errors import ConfigError

T = TypeVar("T", bound="StrictModel")
# Sections that are discriminated unions, and their tags (pydantic puts the tag in the path).
_UNION_TAGS = {
    "model": ("rlr", "uniad", "crad"),
    "data": ("mvtec", "visa", "folder"),
}


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
    loc = list(err["loc"])
    # drop a discriminated union's tag: the user wrote `model.alpha`, not `model.rlr.alpha`
    loc = [
        p for i, p in enumerate(loc)
        if not (i + 1 < len(loc) and p in _UNION_TAGS.get(loc[i - 1] if i else where, ()))
    ]
    path = ".".join(str(p) for p in loc) or "(root)"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    return f"{where}: {path}: {err['msg']}{shown}{more}"
