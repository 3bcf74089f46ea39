"""The ``analyze`` sub-command; ``register(app)`` adds it to ``bitsmith``.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input (unknown
workload, bad option), 3 infeasible budget.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bitsmith.cli_support import (
    FirstLastOption,
    Inputs,
    ProgressOption,
    add_test_numbers,
    choice,
    done,
    parse_ints,
    parse_names,
    print_result,
    with_inputs,
)
from bitsmith.policy import ROUNDING_METHODS
from bitsmith.progress import stage


@with_inputs
def analyze_command(
    inputs: Inputs,
    out: Path = typer.Option(Path("runs/analyze"), help="Run directory to write."),
    bits: str = typer.Option("2,3,4,5,6,8", help="Candidate weight bit widths."),
    methods: str = typer.Option("measured,hessian,fisher",
                                help="Sensitivity methods: measured, hessian, fisher."),
    avg_bits: list[float] = typer.Option([4.0, 3.0], "--avg-bits",
                                         help="Average weight-bit budgets (repeatable); the "
                                         "chosen policy is the most accurate within the first."),
    score: str = typer.Option("", help="Sensitivity score the allocation minimises (default "
                                       "measured_kl)."),
    first_last: FirstLastOption = "same",
    rounding: str = typer.Option("nearest", help="Rounding of every policy: nearest, or "
                                 "learned by reconstruction (adaround, brecq, qdrop); the measured "
                                 "sensitivities are then taken after reconstruction "
                                 "(docs/reconstruction.md)."),
    rounding_iterations: int = typer.Option(1000, min=1, help="Reconstruction steps per layer "
                                            "or block (learned rounding)."),
    hessian_iters: int = typer.Option(32, min=1, help="Hutchinson iterations."),
    epochs: int = typer.Option(30, min=1, help="Training epochs (digits only)."),
    progress: ProgressOption = True,
) -> None:
    """Per-layer sensitivity and ILP bit allocation at average-bit budgets, with its report.

    Every policy (uniform and allocated, at each budget) is scored on the validation data;
    the chosen one is the most accurate within the first budget. Test accuracy of the
    chosen policy is reported, never used to choose. Exit 3: infeasible budget.

    Example: bitsmith analyze --model resnet20 --out runs/r20 --avg-bits 4 --avg-bits 3
    """
    from bitsmith.analyze.pipeline import AnalyzeConfig, analyze

    cfg = AnalyzeConfig(bits=parse_ints(bits, "--bits"), methods=parse_names(methods, "--methods"),
                        avg_bits=tuple(avg_bits), score=score or None, first_last=first_last,
                        rounding=choice(rounding, "--rounding", ROUNDING_METHODS),
                        rounding_iterations=rounding_iterations,
                        hessian_iters=hessian_iters, progress=progress)
    with stage(f"loading {inputs.model}", progress):
        work = inputs.load(calibration_size=512, validation_size=1000, epochs=epochs)
    cfg = cfg.replace(labels={"model": work.name, "dataset": work.dataset},
                      sensitivity_examples=work.data.info["validation"].size or 1000)
    result = analyze(work.model, work.calibration, work.validation,
                     evaluate=inputs.evaluate(work), config=cfg, out_dir=out, log=done)
    if work.test is not None:
        with stage("scoring the chosen policy on the test set", progress):
            add_test_numbers(result, work.model, work.test, work.eval_set)
    print_result(result)
    from bitsmith.report import write_report

    done(f"report written to {write_report(out)}")


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to ``app``."""
    app.command("analyze")(analyze_command)
