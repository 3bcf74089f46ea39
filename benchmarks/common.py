"""Helpers shared by the benchmark scripts: environment record and result writing."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from bitsmith.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def quiet_tuning(threads: int) -> None:
    """Process set-up of the tuning benchmarks: no Python warnings, no per-trial Optuna log
    lines, ``threads`` torch intra-op threads."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(threads)


def write_result(name: str, payload: dict[str, Any], summary_lines: list[str]) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; print the summary."""
    RESULTS.mkdir(parents=True, exist_ok=True)

    payload = {"benchmark": name, "environment": environment(), **payload}
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2))
    text = "\n".join([f"# {name}", "", *summary_lines, ""])
    atomic_write_text(RESULTS / f"{name}.md", text)
    print(text)
    return path


@torch.no_grad()
def correct_string(model: torch.nn.Module, batches) -> str:
    """Per-image correctness over ``(inputs, labels)`` batches as a '0'/'1' string (for the
    paired McNemar test)."""
    model.eval()
    out = []
    for x, y in batches:
        out += ["1" if c else "0" for c in (model(x).argmax(1) == y).tolist()]
    return "".join(out)


def mcnemar_counts(a: str, b: str) -> tuple[int, int, float]:
    """Exact two-sided McNemar test of two per-image correctness strings:
    ``(only a right, only b right, p)``."""
    from scipy.stats import binomtest

    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)
