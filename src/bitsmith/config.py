"""Strict plain-data configs: frozen dataclasses that load from mappings, YAML and JSON.

Every config of bitsmith (a producer's ``XConfig``, a search space file, the CLI's
``--config`` file) is read through this module so that a user's typo is an error,
not a silently ignored key:

- an unknown key raises :class:`ConfigError` listing the valid keys and the closest match;
- types are strict: a boolean must be ``true``/``false`` (not ``"no"``), a number must be a
  number (not ``"0.5"``, not a boolean), a string a string;
- unreadable files (binary garbage, invalid YAML, a YAML tag that would build a Python
  object) raise :class:`ConfigError` naming the file.

Subclass :class:`Config` with ``@dataclass(frozen=True)``; fields may be ``bool``, ``int``,
``float``, ``str``, ``Path``, ``X | None``, ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]``,
``Literal[...]`` or another :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bitsmith.errors import InputError

C = TypeVar("C", bound="Config")


class ConfigError(InputError):
    """A config mapping or file is invalid; the message names the file, the key and the fix."""


def closest_match(name: str, valid: Iterable[str]) -> str | None:
    """The valid name most similar to ``name`` (``None`` when nothing is close)."""
    matches = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_keys(data: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``data`` not in ``valid``."""
    valid = sorted(valid)
    for key in data:
        if key not in valid:
            hint = closest_match(key, valid)
            did_you = f"did you mean {hint!r}? " if hint else ""
            raise ConfigError(f"{where}: unknown key {key!r}; {did_you}valid keys: "
                              f"{', '.join(valid)}")


def read_structured_file(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML or JSON file with the safe loader; any failure is a :class:`ConfigError`.

    ``.json`` files are parsed as JSON, others with the safe YAML loader. Binary garbage,
    undecodable text, invalid syntax and Python-object tags are refused with one line naming
    ``path``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist; check the path")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not UTF-8 text (binary file?); give a YAML or "
                          "JSON file") from None
    except OSError as err:
        raise ConfigError(f"{what} {p} cannot be read: {err.strerror or err}") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {p} contains NUL bytes (binary file?); give a YAML or "
                          "JSON file")
    return parse_structured_text(text, f"{what} {p}", json_only=p.suffix.lower() == ".json")


MAX_NODES = 1_000_000


def parse_structured_text(text: str, where: str, json_only: bool = False) -> Any:
    """Parse YAML (or JSON only) text safely; any failure is a :class:`ConfigError` naming
    ``where``. Refuses documents nested too deeply, and YAML whose aliases expand to more
    than :data:`MAX_NODES` values (an "alias bomb" that would hang a consumer walking it)."""
    try:
        if json_only:   # JSON parser for .json: PyYAML's YAML 1.1 reads JSON's 1e-05 as a str
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON ({err}); fix the syntax") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{where} is not valid YAML/JSON ({first}); fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a bitsmith file") from None
    check_size(data, where)
    return data


def check_size(data: Any, where: str, limit: int = MAX_NODES) -> None:
    """Raise :class:`ConfigError` if ``data``, with shared (aliased) parts counted every time
    they are reached, has more than ``limit`` values (the walk stops at the limit)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where} expands to more than {limit:,} values (YAML aliases?); "
                              "write the file without anchors/aliases")
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _union(value: Any, args: tuple, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return coerce(value, arg, where)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if len(errors) == 1 else
                      f"{where}: {value!r} is not one of "
                      f"{' | '.join(_type_name(a) for a in args)}")


def _literal(value: Any, args: tuple, where: str) -> Any:
    if any(value == a and type(value) is type(a) for a in args):
        return value
    raise ConfigError(f"{where}: {value!r} is not allowed; use one of "
                      f"{', '.join(repr(a) for a in args)}")


def _scalar(value: Any, tp: type, where: str) -> Any:
    """``bool``, ``int``, ``float``, ``str`` and ``Path`` values, strictly."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                Path: "a path"}[tp]
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _sequence(value: Any, origin: Any, args: tuple, where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        items = [coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    else:
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _mapping(value: Any, args: tuple, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    key_tp, val_tp = args if args else (Any, Any)
    return {coerce(k, key_tp, f"{where} key"): coerce(v, val_tp, f"{where}.{k}")
            for k, v in value.items()}


def _instance(value: Any, tp: type, where: str) -> Any:
    if issubclass(tp, Config) and not isinstance(value, tp):
        return tp.from_dict(value, where=where)
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type hint ``tp`` strictly and convert containers.

    Lists become tuples for ``tuple[...]`` fields, strings become ``Path`` for ``Path``
    fields, integers are accepted for ``float``, mappings become nested :class:`Config`
    objects; nothing else is converted.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _union(value, args, where)
    if origin is typing.Literal:
        return _literal(value, args, where)
    if tp in (bool, int, float, str, Path):
        return _scalar(value, tp, where)
    if origin in (tuple, list):
        return _sequence(value, origin, args, where)
    if origin in (dict, Mapping):
        return _mapping(value, args, where)
    if isinstance(tp, type):
        return _instance(value, tp, where)
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of bitsmith's frozen config dataclasses (strict loading, plain-data round trip)."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str = "") -> C:
        """Build from a mapping; unknown keys and wrongly typed values raise ConfigError."""
        where = where or cls.__name__
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, "
                              f"got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        check_keys(data, fields, where)
        hints = typing.get_type_hints(cls)
        values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """Load from a YAML or JSON file (safe loader)."""
        return cls.from_dict(read_structured_file(path, f"{cls.__name__} file"), where=str(path))

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like ``from_dict``)."""
        return type(self).from_dict({**self.to_dict(shallow=True), **changes})

    def to_dict(self, shallow: bool = False) -> dict[str, Any]:
        """Plain data (JSON-ready unless ``shallow``: then nested configs stay objects)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if shallow else _plain(value)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
