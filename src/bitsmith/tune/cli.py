"""The ``bitsmith tune`` command. Wire it with ``register(app)``.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input, 3 infeasible
(no configuration met the constraint; the closest one is reported and saved in
``best.json``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from bitsmith.cli_support import (
    Inputs,
    ProgressOption,
    add_test_numbers,
    choice,
    parse_names,
    print_result,
    with_inputs,
)
from bitsmith.progress import stage
from bitsmith.tune.errors import TuneError

EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3
OBJECTIVES = {"min-cost": "min_cost", "max-accuracy": "max_accuracy", "pareto": "pareto"}
VALIDATION_SIZE = 2000  # of the CIFAR-10 JPEG validation split, unless --validation-size


@with_inputs
def tune_command(
    inputs: Inputs,
    space: Path = typer.Option(None, help="Search-space YAML/JSON (see docs/tune.md)."),
    space_preset: str = typer.Option("mixed", help="Space preset when no --space: mixed, "
                                                   "quantune."),
    strategy: str = typer.Option("xgboost", help="random, grid, genetic, tpe, xgboost."),
    objective: str = typer.Option("min-cost", help="min-cost, max-accuracy, pareto."),
    cost: str = typer.Option("size", help="The cost to minimise or bound: size, bitops, "
                                          "latency (latency needs --backend onnxruntime)."),
    backend: str = typer.Option("torch", help="Where configurations run: torch (fake "
                                              "quantization) or onnxruntime (exported, "
                                              "integer kernels; measures latency)."),
    tolerance: float = typer.Option(1.0, help="Max accuracy drop in points (min-cost)."),
    budget: float = typer.Option(None, help="Max cost (bytes / BitOPs) for max-accuracy."),
    n_trials: int = typer.Option(100, help="Trial budget of the study (all workers)."),
    timeout: float = typer.Option(None, help="Seconds after which this worker stops."),
    storage: str = typer.Option(None, help="SQLAlchemy URL; default sqlite in --out."),
    study: str = typer.Option("bitsmith-tune", help="Study name shared by workers."),
    out: Path = typer.Option(Path("runs/tune"), help="Run directory."),
    transfer: list[Path] = typer.Option(None, help="transfer.json of earlier studies."),
    init_policy: list[Path] = typer.Option(None, help="Warm-start policy files."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Early stopping of "
                               "hopeless configurations after the first validation stage."),
    progress: ProgressOption = True,
    rounding: str = typer.Option("", help="Rounding methods the tuner chooses among "
                                 "(comma list of nearest, adaround, brecq, qdrop; default: the "
                                 "space's, nearest). Learned ones take minutes per configuration "
                                 "(docs/reconstruction.md)."),
    epochs: int = typer.Option(30, help="Training epochs of the digits model."),
) -> None:
    """Auto-tune post-training quantization (Quantune and beyond); resumable, multi-worker.

    Chooses on the validation data by the objective's rule (printed and in the report);
    test accuracy is reported, never chosen on.

    Example: bitsmith tune --model resnet20 --tolerance 1 --n-trials 100 --out runs/r20
    Your model: bitsmith tune --model net.py:build --checkpoint ck.pt --data images/
    Several workers: run the same command with --storage URL --study NAME N times.
    """

    from bitsmith.tune.api import tune
    from bitsmith.tune.config import TuneConfig
    from bitsmith.tune.space import TuneSpace
    from bitsmith.tune.study import open_storage
    from bitsmith.tune.transfer import load_transfer

    kind = OBJECTIVES.get(objective)
    if kind is None:
        raise TuneError(f"--objective {objective!r} is unknown; use one of "
                        f"{', '.join(OBJECTIVES)}")
    choice(backend, "--backend", ("torch", "onnxruntime"))
    space_obj = TuneSpace.load(space) if space is not None else TuneSpace.from_dict(
        {"preset": space_preset})
    if rounding:
        space_obj = dataclasses.replace(space_obj, rounding=parse_names(rounding, "--rounding"))
    cfg = TuneConfig(
        space=space_obj,
        objective=kind, metric=cost, tolerance=tolerance, budget=budget, strategy=strategy,
        n_trials=n_trials, timeout=timeout, storage=storage, study_name=study, seed=inputs.seed,
        prune=prune, backend=backend, init_policies=tuple(init_policy or ()),
        transfer=tuple(transfer or ()), progress=progress)
    if storage is not None:
        open_storage(storage)           # fail fast, before loading the model
    for path in cfg.transfer:
        load_transfer(path)
    cfg.warm_starts()
    with stage(f"loading {inputs.model}", progress):
        work = inputs.load(validation_size=VALIDATION_SIZE, epochs=epochs)
    cfg = cfg.replace(labels={"model": work.name, "dataset": work.dataset},
                      space=clamp_calibration(cfg.make_space(), work.data.calibration))
    result = tune(work.model, work.data.calibration, work.data.validation,
                  evaluate=inputs.evaluate(work), config=cfg, out_dir=out)
    if work.test is not None:
        with stage("scoring on the test set", progress):
            add_test_numbers(result, work.model, work.test, work.eval_set)
    print_result(result)
    if not result.summary["feasible"]:
        typer.echo(f"infeasible: no configuration met the constraint; the closest is saved "
                   f"in {out}/best.json", err=True)
        raise typer.Exit(EXIT_INFEASIBLE)


def register(app: typer.Typer) -> None:
    """Add the ``tune`` command to ``app``."""
    app.command("tune")(tune_command)


def clamp_calibration(space: Any, calibration: Any) -> Any:
    """The space with its ``calib_size`` choices capped at the calibration set's size (a
    user's folder may hold fewer images than a preset's 1,000)."""
    from bitsmith.scoring import count_examples

    n = count_examples(calibration)
    if n is None or max(space.calib_size) <= n:
        return space
    sizes = tuple(sorted({min(c, n) for c in space.calib_size}))
    return dataclasses.replace(space, calib_size=sizes)
