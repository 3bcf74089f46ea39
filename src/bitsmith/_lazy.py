"""Lazy package namespaces (PEP 562): a package's public names import their module on
first use, so that ``bitsmith --help`` and every command's start do not pay for ONNX,
matplotlib or SQLAlchemy until a command needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in the module
    ``exports[name]``; assign both in the package's ``__init__``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*importlib.import_module(package).__dict__, *exports})

    return __getattr__, __dir__
