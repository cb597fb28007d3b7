"""Typed configuration base: unknown keys and wrong types are errors, reported in one line."""

from __future__ import annotations

import reprlib
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from refad.errors import ConfigError

T = TypeVar("T", bound="StrictModel")
# Sections that are discriminated unions, and their tags (pydantic puts the tag in the path),
# told by the schema that defines the union (`name_union_tags`). `model` is not one: its
# section is validated by the registered method's class directly.
_UNION_TAGS: dict[str, tuple[str, ...]] = {}


def name_union_tags(section: str, tags: typing.Iterable[str]) -> None:
    """Errors inside `section` drop these tags from the field path they name."""
    _UNION_TAGS[section] = tuple(tags)


class StrictModel(BaseModel):
    """Pydantic model that forbids unknown fields and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """`true` is not a number: pydantic would read it as 1 (`train.epochs=true`)."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                values = value if isinstance(value, list) else [value]
                if field is not None and any(isinstance(v, bool) for v in values):
                    kinds = _plain_types(field.annotation)
                    if isinstance(value, list):  # list[int]: the element types
                        kinds = set().union(*(_plain_types(a) for k in kinds
                                              for a in typing.get_args(k)))
                    if bool not in kinds and kinds & {int, float}:
                        raise ValueError(f"{key}: expected numbers, not booleans (got {value})")
        return data

    @classmethod
    def parse(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
        """Validate `data`, turning pydantic's report into a one-line ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, where)) from None


def _plain_types(annotation: Any) -> set[Any]:
    """The types a field accepts at its top level (`int | None` -> {int, NoneType})."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain_types(args[0])
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_plain_types(a) for a in args))
    return {annotation}


def short_repr(value: Any) -> str:
    """A value shown in a message stays short: a YAML alias bomb's 9**10 items, or a 5000-digit
    number, made a "one-line" error of megabytes (or a process of 14 GB building it)."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxdict = 2, 4, 4
    shown.maxstring = shown.maxlong = shown.maxother = 60
    return shown.repr(value)


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """First problem of a pydantic ValidationError as `where: field.path: message (got value)`."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    # drop a discriminated union's tag: the user wrote `model.alpha`, not `model.rlr.alpha`
    loc = [
        p for i, p in enumerate(loc)
        if p not in _UNION_TAGS.get(loc[i - 1] if i else where, ())
    ]
    path = ".".join(str(p) for p in loc)
    got = err.get("input")
    shown = "" if isinstance(got, dict | BaseModel) else f" (got {short_repr(got)})"
    more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    message = err["msg"].removeprefix("Value error, ")
    if not path or message.startswith(f"{path}."):
        # a check across fields names the field to change itself ("model.hidden_dims: ...")
        return f"{where}: {message}{shown}{more}"
    return f"{where}: {path}: {message}{shown}{more}"
