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
