"""The ``analyze`` sub-command; ``register(app)`` adds it to ``bitsmith``.

Exit codes follow ``bitsmith.cli``: 0 success, 2 bad input (unknown workload, bad option),
3 infeasible budget. Errors go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
EXIT_BAD_INPUT, EXIT_INFEASIBLE = 2, 3


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}"
                                 ) from None
    if not values:
        raise typer.BadParameter(f"{what} is empty")
    return values


def analyze(
    model: str = typer.Argument(..., help="Workload: resnet20, resnet32 (pretrained, CIFAR-10) "
                                "or digits (SmallCNN trained on the sklearn digits)."),
    out: Path = typer.Option(Path("runs/analyze"), help="Run directory to write."),
    bits: str = typer.Option("2,3,4,5,6,8", help="Candidate weight bit widths."),
    methods: str = typer.Option("measured,hessian,fisher",
                                help="Sensitivity methods: measured, hessian, fisher."),
    avg_bits: list[float] = typer.Option([4.0, 3.0], "--avg-bits",
                                         help="Average weight-bit budgets (repeatable)."),
    metric: str = typer.Option("", help="Score the allocation minimises (default measured_kl)."),
    val_images: int = typer.Option(1000, min=1, help="Validation images for sensitivity."),
    hessian_iters: int = typer.Option(32, min=1, help="Hutchinson iterations."),
    epochs: int = typer.Option(30, min=1, help="Training epochs (digits only)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Per-layer sensitivity and ILP bit allocation at average-bit budgets, with its report.

    Compares each allocation with uniform bits at the same size; everything goes to a run
    directory with its HTML report (exit 3: infeasible budget).

    Example: bitsmith analyze resnet20 --out runs/r20 --avg-bits 4 --avg-bits 3
    """
    from bitsmith.analyze.pipeline import run_analysis
    from bitsmith.analyze.workloads import load_workload
    from bitsmith.cost.budget import InfeasibleBudgetError

    bit_list = _ints(bits, "--bits")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        work = load_workload(model, val_images=val_images, epochs=epochs, seed=seed)
        result = run_analysis(work, out, bits=bit_list, methods=method_list,
                              avg_bits=avg_bits, metric=metric or None,
                              hessian_iters=hessian_iters, progress=True, log=console.print)
    except InfeasibleBudgetError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except (KeyError, ValueError, FileNotFoundError) as err:
        err_console.print(f"[red]error:[/red] {err.args[0] if err.args else err}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"report written to {result.report}")


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to ``app``."""
    app.command("analyze")(analyze)
