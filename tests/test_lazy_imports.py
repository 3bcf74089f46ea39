"""Lazy package namespaces: every public name resolves, and the command line starts
without ONNX, matplotlib, Optuna or SQLAlchemy."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY = ("bitsmith.export", "bitsmith.tune", "bitsmith.report")


@pytest.mark.parametrize("package", LAZY)
def test_every_public_name_resolves_to_its_module_object(package):
    pkg = importlib.import_module(package)
    modules = {name: module for module, names in pkg._MODULES.items() for name in names}
    assert sorted(modules) == sorted(pkg.__all__)
    for name, module in modules.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name)
    assert set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_the_command_line_starts_without_the_heavy_libraries():
    code = ("import sys, bitsmith.cli; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'matplotlib', 'optuna', "
            "'sqlalchemy', 'xgboost') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[]"
