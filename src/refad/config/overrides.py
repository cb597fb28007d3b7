"""Changing a RunConfig by field path: typed values (`with_fields`), `--set` strings
(`apply_overrides`) and config files (`load_config_file`) all end in one validation.

Paths are the schema's own (`train.epochs`, `model.alpha`), so a field added to the schema is
reachable from every entry point without further code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refad.config.schema import RunConfig
from refad.errors import ConfigError


def _put(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{where}: {part!r} is not a config section")
        node = node[part]
    node[parts[-1]] = value


def with_fields(config: RunConfig, fields: Mapping[str, Any], where: str = "config") -> RunConfig:
    """A copy of `config` with `{"section.field": value}` set (Paths become strings)."""
    data = config.model_dump()
    if fields.get("method", config.method) != config.method:
        data["model"] = {}  # another method: its own model section, from its defaults
    for key, value in fields.items():
        _put(data, key, str(value) if isinstance(value, Path) else value, f"{where} {key!r}")
    return RunConfig.parse(data, where=where)


def parse_override(item: str) -> tuple[str, Any]:
    """`section.field=value` -> (path, value); the value is JSON when it parses, else a string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply `--set section.field=value` strings."""
    fields = dict(parse_override(item) for item in overrides)
    return with_fields(config, fields, where="override") if fields else config


def load_config_file(path: Path | str) -> RunConfig:
    """A RunConfig from a JSON or YAML file (the schema of a saved `config.json`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json and yaml raise their own error types
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        first = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid {kind} ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top")
    return RunConfig.parse(data, where=str(path))
