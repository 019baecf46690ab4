"""Typed, frozen stage configs loaded from YAML and overridden from the command line.

Every stage owns one frozen dataclass (e.g. ``SynthConfig``). A config is built from, in
increasing precedence: the dataclass defaults, an optional YAML file (``configs/*.yaml``),
``--set key=value`` strings (dotted keys reach nested dataclasses, values are parsed as YAML),
and the explicit options of a CLI command. Unknown keys and wrong types raise
:class:`ConfigError` naming the key, so a typo never silently falls back to a default.

The resolved config (``to_dict``) is what later stages save next to their outputs.

    cfg = load_config(SynthConfig, "configs/synth.yaml", sets=["ids=50"], overrides={"seed": 3})
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert YAML shapes (lists, str) to it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} matches none of {' | '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is dict or origin is dict:  # free-form mappings (a teacher's description): checked as a mapping only
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 2e-3 (no dot) as a string; accept what Python reads as a number
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {type(value).__name__} {value!r}")
        return Path(value)
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(prefix + str(k) for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; {cls.__name__} accepts: {', '.join(fields)}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith(prefix):
            raise ConfigError(f"{prefix}{exc}") from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML/JSON-safe dict of a config (tuples become lists, paths strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is read as YAML (``[1, 2]``, ``true``, ``0.5``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def _merge_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    sets: typing.Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a stage config: defaults < YAML file < ``--set`` strings < explicit overrides.

    Args:
        cls: the stage's frozen dataclass.
        path: optional YAML file holding a (partial) mapping of the config's keys.
        sets: ``key=value`` strings; dotted keys reach nested sections.
        overrides: already-typed values (e.g. CLI options); ``None`` values mean "not given".
    """
    tree: dict[str, Any] = load_yaml(path) if path is not None else {}
    for item in sets:
        key, value = parse_set(item)
        _merge_dotted(tree, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _merge_dotted(tree, key, value)
    return from_dict(cls, tree)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what runs save next to their outputs)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "", skip: typing.Iterable[str] = (),
                labels: tuple[str, str] = ("was", "now")) -> list[str]:
    """``prefix.key: <was> A, <now> B`` for every differing leaf of two nested config dicts.

    ``skip`` names top-level keys to leave out (e.g. runtime fields that may change on resume).
    """
    skip = set(skip)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in skip:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += differences(a, b, f"{prefix}{key}.", labels=labels)
        elif a != b:
            diffs.append(f"{prefix}{key}: {labels[0]} {a!r}, {labels[1]} {b!r}")
    return diffs


def check(condition: bool, key: str, message: str) -> None:
    """Validation helper for ``__post_init__``: raise ConfigError naming ``key`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
