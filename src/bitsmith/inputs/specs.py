"""User-given references turned into Python objects, with errors that name the input.

* :func:`load_callable`: ``path/to/file.py:name`` (the file is imported under a private
  module name, with its folder on ``sys.path`` while it runs, so sibling imports work) or
  ``package.module:name`` (imported normally).
* :func:`load_mapping`: keyword arguments from a mapping, a ``.yaml`` / ``.yml`` / ``.json``
  file (read by :func:`bitsmith.config.read_structured_file`), inline YAML
  (``"{num_classes: 10}"``) or ``key=value`` pairs (``"num_classes=10, width=8"``; values
  parsed as YAML scalars). YAML is always read with ``safe_load``.
* :func:`call_user`: call a user function and turn any exception into the caller's
  :class:`~bitsmith.errors.InputError` subclass, one line, with the file and line it came from.

Each function takes ``what`` (how the input was given, e.g. ``"--model net.py:build"``) and
``error`` (the :class:`InputError` subclass to raise), so every message names the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from bitsmith.config import ConfigError, read_structured_file
from bitsmith.errors import InputError, one_line

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_ATTR_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
MAPPING_SUFFIXES = (".yaml", ".yml", ".json")


def split_callable_spec(spec: str) -> tuple[str, str] | None:
    """``("file.py" or "package.module", "name")`` when ``spec`` looks like a callable
    reference, else ``None`` (a registered name, a folder, ...)."""
    if ":" not in spec:
        return None
    target, _, attr = spec.rpartition(":")
    if not target or not _ATTR_RE.match(attr):
        return None
    if is_file_target(target) or _MODULE_RE.match(target):
        return target, attr
    return None


def is_file_target(target: str) -> bool:
    """Whether the part before ``:`` names a Python file rather than a module."""
    return target.endswith(".py") or "/" in target or "\\" in target


def describe_exception(err: BaseException, path: Path | None = None) -> str:
    """``"TypeError: message (file.py line 12)"`` on one line; the line is the deepest frame
    inside ``path`` when given (the user's own code), else the deepest frame."""
    where = ""
    if isinstance(err, SyntaxError) and err.lineno is not None:
        where = f" ({Path(err.filename or str(path)).name} line {err.lineno})"
        return f"SyntaxError: {one_line(err.msg)}{where}"
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(err.__traceback__))
    if path is not None:
        target = str(path.resolve())
        frames = [f for f in frames if str(Path(f.filename).resolve()) == target] or frames
    if frames:
        where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    return f"{type(err).__name__}: {one_line(err)}{where}"


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def import_file(path: str | Path, *, what: str, error: type[InputError]) -> ModuleType:
    """Import a Python file by path (re-executed on every call) and return the module.

    The module is registered in ``sys.modules`` as ``bitsmith_user_<stem>_<hash>`` (the
    hash of its absolute path) so that classes defined in it can be pickled by reference.

    Raises:
        error: the file does not exist, or importing it raised (message: exception and line).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise error(f"{what}: file {str(file)!r} not found; check the path "
                    "(relative paths start at the current directory)")
    resolved = file.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", resolved.stem)
    name = f"bitsmith_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise error(f"{what}: {str(file)!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(resolved.parent):
            spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise error(f"{what}: importing {str(file)!r} failed: "
                    f"{describe_exception(err, resolved)}; fix the file") from err
    return module


def import_module(target: str, *, what: str, error: type[InputError]) -> ModuleType:
    """``importlib.import_module(target)`` with one-line errors."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and (target == err.name or target.startswith(err.name + ".")):
            raise error(f"{what}: no Python module named {err.name!r}; install the package, "
                        "add its folder to PYTHONPATH, or give a file as path/to/file.py:name"
                        ) from err
        raise error(f"{what}: importing {target!r} failed: {describe_exception(err)}") from err
    except Exception as err:
        raise error(f"{what}: importing {target!r} failed: {describe_exception(err)}; "
                    "fix the module") from err


def load_callable(spec: str, *, what: str, error: type[InputError]
                  ) -> tuple[Callable[..., Any], Path | None]:
    """The callable named by ``file.py:name`` or ``package.module:name``.

    Returns:
        ``(callable, path of the file or None for a module)``; the path lets error messages
        point at the user's own lines.

    Raises:
        error: malformed reference, missing file or module, failing import, missing
            attribute (the message lists the public callables the module does define),
            or an attribute that is not callable.
    """
    parts = split_callable_spec(spec)
    if parts is None:
        raise error(f"{what}: {spec!r} is not a reference to a function; write "
                    "path/to/file.py:function or package.module:function")
    target, attr = parts
    if is_file_target(target):
        module = import_file(target, what=what, error=error)
        path: Path | None = Path(target).expanduser().resolve()
    else:
        module = import_module(target, what=what, error=error)
        file = getattr(module, "__file__", None)
        path = Path(file).resolve() if file else None
    obj: Any = module
    for piece in attr.split("."):
        if not hasattr(obj, piece):
            defined = sorted(k for k, v in vars(module).items()
                             if callable(v) and not k.startswith("_")
                             and getattr(v, "__module__", None) == module.__name__)
            hint = f" (it defines: {', '.join(defined[:10])})" if defined else ""
            raise error(f"{what}: {target!r} has no attribute {attr!r}{hint}; "
                        "check the name after ':'")
        obj = getattr(obj, piece)
    if not callable(obj):
        raise error(f"{what}: {target}:{attr} is a {type(obj).__name__}, not a function; "
                    "name a function or class after ':'")
    return obj, path


def call_user(fn: Callable[..., Any], *args: Any, what: str, error: type[InputError],
              path: Path | None = None, fix: str = "fix the function", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any exception becomes ``error`` naming ``what`` and ``fix``."""
    try:
        return fn(*args, **kwargs)
    except InputError:
        raise
    except Exception as err:
        raise error(f"{what} raised {describe_exception(err, path)}; {fix}") from err


def _parse_pairs(text: str, *, what: str, error: type[InputError]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for piece in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = piece.partition("=")
        key = key.strip()
        if not sep or not re.match(rf"^{_IDENT}$", key):
            raise error(f"{what}: cannot read {piece!r}; write key=value pairs separated by "
                        "commas, inline YAML such as '{num_classes: 10}', or a YAML/JSON file")
        try:
            out[key] = yaml.safe_load(value.strip()) if value.strip() else None
        except yaml.YAMLError:
            out[key] = value.strip()
    return out


def load_mapping(value: str | Path | Mapping[str, Any] | None, *, what: str,
                 error: type[InputError]) -> dict[str, Any]:
    """Keyword arguments from ``value`` (see the module docstring); ``None`` gives ``{}``.

    Raises:
        error: missing file, unreadable YAML/JSON, or anything that is not a mapping with
            string keys.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        data: Any = dict(value)
    else:
        text = str(value).strip()
        path = Path(text).expanduser()
        looks_like_file = isinstance(value, Path) or text.lower().endswith(MAPPING_SUFFIXES)
        if looks_like_file or (path.is_file() and "\n" not in text):
            if not path.is_file():
                raise error(f"{what}: file {text!r} not found; check the path")
            try:
                data = read_structured_file(path, what="keyword-arguments file")
            except ConfigError as err:
                raise error(f"{what}: {err}") from err
        elif "=" in text and ":" not in text:
            data = _parse_pairs(text, what=what, error=error)
        else:
            try:
                data = yaml.safe_load(text) if text else {}
            except yaml.YAMLError as err:
                raise error(f"{what}: cannot parse {text!r} as YAML: {one_line(err)}; write "
                            "'{key: value, ...}', key=value pairs or a file name") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise error(f"{what}: expected a mapping of keyword arguments (key: value), got "
                    f"{type(data).__name__}")
    return dict(data)
