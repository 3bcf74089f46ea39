"""The ``report`` sub-command; ``register(app)`` adds it to ``bitsmith``.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input (missing or
incomplete run directory).
"""

from __future__ import annotations

from pathlib import Path

import typer

from bitsmith.cli_support import ProgressOption, done
from bitsmith.progress import stage


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (run.json, layers.json, "
                                   "trials.jsonl, policy.yaml; optional sensitivity.json, "
                                   "search.jsonl, export.json)."),
    progress: ProgressOption = True,
) -> None:
    """Write report.html (self-contained), report.md and report.json for a run directory.

    Example: bitsmith report runs/demo
    """
    from bitsmith.report import write_report

    with stage(f"report of {run_dir}", progress):
        path = write_report(run_dir)
    done(f"report written to {path}")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report_command)
