"""The ``--config`` file of the command line: option defaults per command, checked strictly.

Format (YAML or JSON)::

    demo:              # a command name
      epochs: 10       # an option of that command (``-`` or ``_``), typed like the option
      out: runs/quick

Every command name and option name must exist (an unknown one is a :class:`ConfigError`
listing the valid names and the closest match) and every value must have the option's
type: ``true``/``false`` for flags (not ``"no"``), an integer for integer options (not
``"5"``, not ``true``), a number for float options, a list for repeatable options.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitsmith.config import ConfigError, check_keys, coerce, read_structured_file


def _check_value(param: Any, value: Any, where: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` has the type of the option ``param``."""
    if value is None:
        return
    descriptor = getattr(param, "type_descriptor", None)
    hint = getattr(descriptor, "annotation", None)
    if hint is None:
        return
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [m.value for m in hint]
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use one of {allowed}")
        return
    coerce(value, hint, where)


def check_cli_config(data: Any, group: Any, ctx: Any, where: str) -> dict[str, dict[str, Any]]:
    """Validate ``{command: {option: value}}`` against the commands of the CLI ``group``;
    returns the mapping with option names in their Python form (``-`` -> ``_``) for the
    parser's ``default_map``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise ConfigError(f"{where} must map command names to option mappings, e.g. "
                          "'demo: {epochs: 5}'")
    check_keys(data, group.list_commands(ctx), where)
    out: dict[str, dict[str, Any]] = {}
    for name, options in data.items():
        params = {p.name: p for p in group.get_command(ctx, name).params if p.name}
        opts = {str(k).replace("-", "_"): v for k, v in options.items()}
        check_keys(opts, params, f"{where}, command {name!r}")
        for key, value in opts.items():
            _check_value(params[key], value, f"{where}, {name}.{key}")
        out[name] = opts
    return out


def load_cli_config(path: Path, group: Any, ctx: Any) -> dict[str, dict[str, Any]]:
    """Read and check a ``--config`` file (see the module docstring).

    Raises:
        ConfigError: missing or unreadable file (binary garbage, invalid YAML), an unknown
            command or option (with the closest match), or a value of the wrong type.
    """
    data = read_structured_file(path, "--config file")
    return check_cli_config(data, group, ctx, f"--config file {path}")
