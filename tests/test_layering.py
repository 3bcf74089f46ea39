"""The layering contract of src/bitsmith, checked over every import (function-level ones too).

A module may import from its own package and from packages in *lower* layers only; the
packages of one layer are independent of each other (in particular the producers never
import each other). Because every edge points downwards, there is no package-level cycle.
docs/overview.md ("Layers") explains the layers; a new package must be added here.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bitsmith"

# Bottom to top. "__init__" is the package root (bitsmith/__init__.py), the public API.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"_version", "_lazy", "errors", "progress", "pareto"}),
    ("files", {"atomic", "safeload"}),
    ("plain data", {"config", "schemes", "calibrate", "data", "engine"}),
    ("policy, models", {"policy", "models"}),
    ("conversion, result", {"graph", "result"}),
    ("reconstruction", {"reconstruct"}),
    ("cost, quantize", {"cost", "quantize"}),
    ("shared primitives", {"allocation", "training", "inputs"}),
    ("run directory, estimators, scoring", {"rundir", "trained", "sensitivity", "scoring"}),
    ("cli support", {"cli_support", "cli_config"}),
    ("consumers", {"export", "report"}),
    ("producers", {"tune", "analyze", "search", "compress"}),
    ("one call", {"auto"}),
    ("demo", {"demo"}),
    ("app", {"__init__", "cli", "__main__"}),
]


def package_of(module: str) -> str | None:
    """``bitsmith.search.cli`` -> ``search``; ``bitsmith`` -> ``__init__``; others None."""
    parts = module.split(".")
    if parts[0] != "bitsmith":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports(root: Path) -> Iterator[tuple[str, str, str]]:
    """``(importing package, imported package, "file:line")`` for every bitsmith import,
    at module level, inside functions and under ``if TYPE_CHECKING`` alike."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        source = package_of(module) or "__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                          if node.module == "bitsmith"]
                if node.module == "bitsmith":  # `from bitsmith import x`: the root or a package
                    names = [f"bitsmith.{a.name}" if (root / a.name).exists()
                             or (root / f"{a.name}.py").exists() else "bitsmith"
                             for a in node.names]
            else:
                continue
            for name in names:
                target = package_of(name)
                if target is not None and target != source:
                    yield source, target, f"{path.relative_to(root.parent)}:{node.lineno}"


def layer_index(layers: list[tuple[str, set[str]]]) -> dict[str, int]:
    return {pkg: i for i, (_, pkgs) in enumerate(layers) for pkg in pkgs}


def violations(root: Path, layers: list[tuple[str, set[str]]] = LAYERS) -> list[str]:
    """Every import that breaks the contract, one readable line each."""
    index = layer_index(layers)
    out = []
    for source, target, where in imports(root):
        if source not in index or target not in index:
            missing = source if source not in index else target
            out.append(f"{where}: package {missing!r} is in no layer; add it to LAYERS")
        elif index[target] > index[source]:
            out.append(f"{where}: {source} ({layers[index[source]][0]}) imports {target} "
                       f"({layers[index[target]][0]}), a higher layer")
        elif index[target] == index[source]:
            out.append(f"{where}: {source} imports {target}, a package of the same layer "
                       f"({layers[index[source]][0]}); siblings must stay independent")
    return out


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components (size > 1) of the package import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for source, target, _ in imports(root):
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    counter, stack, on_stack = [0], [], set()
    low: dict[str, int] = {}
    num: dict[str, int] = {}
    found = []

    def visit(v: str) -> None:
        num[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in num:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], num[w])
        if low[v] == num[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in num:
            visit(v)
    return found


def test_every_package_is_in_one_layer():
    index = layer_index(LAYERS)
    assert sum(len(p) for _, p in LAYERS) == len(index), "a package is listed twice"
    on_disk = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir()
                                                    if (p / "__init__.py").is_file()}
    assert on_disk - set(index) == set(), "packages missing from LAYERS"


def test_layering_contract_holds():
    assert violations(SRC) == []


def test_no_package_level_cycle():
    assert cycles(SRC) == []


@pytest.fixture
def src_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bitsmith"
    shutil.copytree(SRC, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_an_upward_import_inside_a_function_is_caught(src_copy):
    base = src_copy / "schemes" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _upward():\n    from bitsmith.cli import app\n"
                    "    return app\n")
    found = violations(src_copy)
    assert len(found) == 1
    assert "schemes/base.py" in found[0] and "imports cli" in found[0]
    assert cycles(src_copy)  # schemes -> cli -> ... -> schemes


def test_a_producer_importing_another_producer_is_caught(src_copy):
    pipeline = src_copy / "compress" / "pipeline.py"
    pipeline.write_text(pipeline.read_text() + "\n\nfrom bitsmith.search import derive_policy\n")
    found = violations(src_copy)
    assert len(found) == 1 and "compress imports search" in found[0]


def test_importing_the_package_root_from_below_is_caught(src_copy):
    metadata = src_copy / "export" / "metadata.py"
    metadata.write_text(metadata.read_text() + "\n\ndef _v():\n    import bitsmith\n"
                        "    return bitsmith\n")
    found = violations(src_copy)
    assert len(found) == 1 and "export" in found[0] and "imports __init__" in found[0]


def test_no_function_takes_more_than_12_parameters_outside_cli_commands():
    """Knobs travel in config objects (``TuneConfig``, ``Timing``, ``ArchSchedule``...);
    only the command-line signatures (``cli.py`` modules) list every option."""
    too_many = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(names) + bool(a.vararg) + bool(a.kwarg) - (names[:1] in (["self"],
                                                                                  ["cls"]))
                if n > 12:
                    too_many.append(f"{path.relative_to(SRC.parent)}:{node.lineno} "
                                    f"{node.name} ({n})")
    assert too_many == []


def test_the_overview_documents_these_layers():
    """docs/overview.md's "Layers" table names the same packages in the same order."""
    import re

    text = (SRC.parents[1] / "docs" / "overview.md").read_text()
    table = text.split("## Layers", 1)[1].split("| layer (bottom to top) |", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    documented = [{"__init__" if n == "bitsmith" else n
                   for n in re.findall(r"`([\w.]+)`", row.split("|")[2])} for row in rows]
    assert documented == [pkgs - {"__main__"} for _, pkgs in LAYERS]
