"""Changing a RunConfig by field path: typed values (`with_fields`), `--set` strings
(`apply_overrides`) and config files (`load_config_file`) all end in one validation.

Paths are the schema's own (`train.epochs`, `model.alpha`), so a field added to the schema is
reachable from every entry point without further code.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refad.config.schema import RunConfig
from refad.errors import ConfigError

# A config is a few kilobytes; a 50 MB YAML file took 4 minutes and 5 GB to parse before it
# was refused. The size is checked before a byte is parsed.
MAX_CONFIG_BYTES = 1_000_000


def _put(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if part in node and node[part] is None:  # an optional section that is off
            node[part] = {}  # (`data.tiling.overlap=0.3` turns tiling on)
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{where}: {part!r} is not a config section")
        node = node[part]
    node[parts[-1]] = value


def with_fields(config: RunConfig, fields: Mapping[str, Any], where: str = "config") -> RunConfig:
    """A copy of `config` with `{"section.field": value}` set (Paths become strings)."""
    data = config.model_dump()
    data["data"].setdefault("tiling", None)  # left out of the saved form while off
    if fields.get("method", config.method) != config.method:
        data["model"] = {}  # another method: its own model section, from its defaults
    for key, value in fields.items():
        _put(data, key, str(value) if isinstance(value, Path) else value, f"{where} {key!r}")
    return RunConfig.parse(data, where=where)


def differing_fields(a: RunConfig, b: RunConfig, ignore: Iterable[str] = ()) -> list[str]:
    """The field paths (`train.epochs`) whose values differ between two configs, sorted."""
    skip = set(ignore)

    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else key))
        return out

    left, right = flat(a.model_dump(mode="json"), ""), flat(b.model_dump(mode="json"), "")
    return sorted(k for k in left.keys() | right.keys()
                  if k not in skip and left.get(k) != right.get(k))


def _value(raw: str) -> Any:
    """JSON when it parses, else the text itself."""
    try:
        return json.loads(raw)
    except ValueError:  # not JSON, or a number of more digits than Python converts
        return raw


def parse_override(item: str) -> tuple[str, Any]:
    """`section.field=value` -> (path, value); the value is JSON when it parses, else a string,
    and a flat list may leave its words unquoted (`data.categories=[fabric, screw]`, as a
    shell passes it: the JSON form needs quotes the shell takes away)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    value = _value(raw)
    inner = raw.strip()[1:-1]
    if (isinstance(value, str) and raw.strip().startswith("[") and raw.strip().endswith("]")
            and not any(c in inner for c in "[]{}\"")):
        value = [_value(part.strip()) for part in inner.split(",")] if inner.strip() else []
    return key, value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`--set` strings as `{path: value}`. A field set twice (`train.epochs=3` and
    `train.epochs=5`, or `train={...}` and `train.epochs=5`) is refused, as a key twice in a
    config file is: the last one won without a word."""
    fields: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        for earlier, text in given.items():
            if _overlap(key, earlier):
                field = max(key, earlier, key=len)
                raise ConfigError(f"{field}: given twice ({text}, then {item}); set it once")
        fields[key], given[key] = value, item
    return fields


def _overlap(a: str, b: str) -> bool:
    """True when the paths name one field, or one holds the other (`train`, `train.epochs`)."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def refuse_flags_set_again(flags: Mapping[str, str], overrides: Iterable[str]) -> None:
    """`{path: "--flag"}` of the flags given: none may be set again by `--set` (`--epochs 3
    --set train.epochs=5` trained 5 epochs without a word)."""
    for item in overrides:
        key, _ = parse_override(item)
        for path, flag in flags.items():
            if _overlap(key, path):
                raise ConfigError(f"{path}: given by {flag} and by --set {item}; set it once")


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply `--set section.field=value` strings (each field once)."""
    fields = parse_overrides(overrides)
    return with_fields(config, fields, where="override") if fields else config


def load_config_file(path: Path | str) -> RunConfig:
    """A RunConfig from a JSON or YAML file (the schema of a saved `config.json`)."""
    path = Path(path)
    try:
        text = _read_small_file(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _load_yaml(text, path)
        else:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, path))
    except ConfigError:
        raise
    except Exception as exc:  # json and yaml raise their own error types
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        first = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid {kind} ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top")
    return RunConfig.parse(data, where=str(path))


def _read_small_file(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. A FIFO or a device is refused
    before it is opened (opening a FIFO waits for a writer); a file that grows while it is
    read is still cut at the limit."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: not a regular file")
    with path.open("rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        size = max(path.stat().st_size, len(data))
        raise ConfigError(f"{path}: {size / 1e6:.1f} MB is more than the "
                          f"{MAX_CONFIG_BYTES / 1e6:g} MB a config file may hold (a config is "
                          "a few KB; is this the right file?)")
    return data.decode()


def _unique(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A key given twice would be decided by its last value without a word (a second
    `train` section silently dropped every field of the first)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"{path}: key {key!r} is given twice")
        out[key] = value
    return out


def _load_yaml(text: str, path: Path) -> Any:
    """Safe YAML without aliases (a kilobyte of nested ones expands to billions of values;
    a config needs none) and without a key given twice in one mapping."""
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing is built yet
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            raise ConfigError(f"{path}: line {current.start_mark.line + 1}: YAML aliases (*name) "
                              "are not supported in config files")
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys = [k.value for k, _ in current.value if isinstance(k, yaml.ScalarNode)]
            twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            if twice is not None:
                raise ConfigError(f"{path}: line {current.start_mark.line + 1}: key {twice!r} "
                                  "is given twice")
            stack.extend(v for pair in current.value for v in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return yaml.safe_load(text)
