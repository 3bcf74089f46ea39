"""The ``report`` sub-command; ``register(app)`` adds it to ``bitsmith``.

Exit codes follow ``bitsmith.cli``: 0 success, 2 bad input (missing or incomplete run
directory). Errors go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
EXIT_BAD_INPUT = 2


def report(
    run_dir: Path = typer.Argument(..., help="Run directory (run.json, layers.json, "
                                   "trials.jsonl, policy.yaml; optional sensitivity.json, "
                                   "search.jsonl, export.json)."),
) -> None:
    """Write report.html (self-contained), report.md and report.json for a run directory.

    Example: bitsmith report runs/demo
    """
    from bitsmith.report import write_report
    from bitsmith.rundir import RunDirError

    try:
        path = write_report(run_dir)
    except RunDirError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"report written to {path}")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report)
