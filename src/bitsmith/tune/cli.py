"""The ``bitsmith tune`` command. Wire it with ``register(app)``.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input, 3 infeasible
(no configuration met the constraint; the closest one is reported and saved in
``best.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bitsmith.cli_support import (
    ModelOption,
    ProgressOption,
    SeedOption,
    choice,
    print_result,
)
from bitsmith.progress import stage
from bitsmith.tune.errors import TuneError

EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3
MODELS = ("resnet20", "resnet32", "digits")
VAL_SPLITS = ("jpeg", "lossless")
OBJECTIVES = {"min-cost": "min_cost", "max-accuracy": "max_accuracy", "pareto": "pareto"}
LOSSLESS_CALIB = 1000


def load_problem(model: str, val_size: int, seed: int, epochs: int = 30,
                 val_split: str = "jpeg") -> tuple[Any, Any, Any]:
    """``(float model, calibration inputs, validation data)`` of a built-in problem.

    ``resnet20`` / ``resnet32``: the pretrained CIFAR-10 ResNets. ``val_split="jpeg"``:
    calibration on the 4,000 lossless training images, validation on the first
    ``val_size`` JPEG validation images; ``"lossless"``: calibration on the first 1,000
    lossless training images, validation on (up to ``val_size`` of) the other 3,000 —
    a better proxy of the damage on the lossless test images (docs/tune.md, "Which
    validation set"). Never the test images. ``digits``: a SmallCNN trained
    here for ``epochs`` epochs on the sklearn digits (calibration = train split,
    validation = val split).
    """
    if model in ("resnet20", "resnet32"):
        from bitsmith.data import cifar10_protocol
        from bitsmith.models import load_pretrained_cifar_resnet

        choice(val_split, "--val-split", VAL_SPLITS)
        proto = cifar10_protocol()
        net = load_pretrained_cifar_resnet(int(model[6:]))
        if val_split == "lossless":
            cal = proto.calibration
            n = min(val_size, len(cal) - LOSSLESS_CALIB)
            return (net, cal.subset(list(range(LOSSLESS_CALIB)), name="cifar10-calib-1000"),
                    cal.subset(list(range(LOSSLESS_CALIB, LOSSLESS_CALIB + n)),
                               name="cifar10-lossless-heldout"))
        val = proto.val
        n = min(val_size, len(val))
        return (net, proto.calibration, val.subset(list(range(n)), name="cifar10-val-subset"))
    if model == "digits":
        import torch

        from bitsmith.data import digits_splits, make_loader
        from bitsmith.engine import fit
        from bitsmith.models import SmallCNN

        torch.manual_seed(seed)
        splits = digits_splits(seed=seed)
        net = SmallCNN()
        fit(net, make_loader(splits.train, batch_size=64, shuffle=True, seed=seed), epochs=epochs,
            lr=3e-3, weight_decay=1e-4)
        return net, splits.train, splits.val
    raise TuneError(f"--model {model!r} is unknown; use one of {', '.join(MODELS)}")


def tune_command(
    model: ModelOption = "resnet20",
    space: Path = typer.Option(None, help="Search-space YAML/JSON (see docs/tune.md)."),
    preset: str = typer.Option("mixed", help="Space preset when no --space: mixed, "
                                             "quantune."),
    strategy: str = typer.Option("xgboost", help="random, grid, genetic, tpe, xgboost."),
    objective: str = typer.Option("min-cost", help="min-cost, max-accuracy, pareto."),
    metric: str = typer.Option("size", help="Cost metric: size, bitops, latency "
                                            "(latency needs --backend onnxruntime)."),
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
    seed: SeedOption = 0,
    val_size: int = typer.Option(2000, help="Validation images (CIFAR models)."),
    val_split: str = typer.Option("jpeg", help="CIFAR validation: jpeg (protocol val "
                                               "split) or lossless (held-out lossless "
                                               "training images; calibration on 1,000)."),
    transfer: list[Path] = typer.Option(None, help="transfer.json of earlier studies."),
    init_policy: list[Path] = typer.Option(None, help="Warm-start policy files."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Early stopping of "
                               "hopeless configurations after the first validation stage."),
    progress: ProgressOption = True,
    epochs: int = typer.Option(30, help="Training epochs of the digits model."),
) -> None:
    """Auto-tune post-training quantization (Quantune and beyond); resumable, multi-worker.

    Example: bitsmith tune --model resnet20 --tolerance 1 --n-trials 100 --out runs/r20
    Several workers: run the same command with --storage URL --study NAME N times.
    """

    from bitsmith.tune.api import tune
    from bitsmith.tune.config import TuneConfig
    from bitsmith.tune.space import TuneSpace
    from bitsmith.tune.study import open_storage

    kind = OBJECTIVES.get(objective)
    if kind is None:
        raise TuneError(f"--objective {objective!r} is unknown; use one of "
                        f"{', '.join(OBJECTIVES)}")
    choice(backend, "--backend", ("torch", "onnxruntime"))
    cfg = TuneConfig(
        space=TuneSpace.load(space) if space is not None else TuneSpace.from_dict(
            {"preset": preset}),
        objective=kind, metric=metric, tolerance=tolerance, budget=budget, strategy=strategy,
        n_trials=n_trials, timeout=timeout, storage=storage, study_name=study, seed=seed,
        prune=prune, backend=backend, init_policies=tuple(init_policy or ()),
        transfer=tuple(transfer or ()), progress=progress,
        labels={"model": model, "dataset": model if model == "digits" else "CIFAR-10"})
    if storage is not None:
        open_storage(storage)           # fail fast, before loading the model
    with stage(f"loading {model}", progress):
        net, calib, val = load_problem(model, val_size, seed, epochs, val_split)
    result = tune(net, calib, val, config=cfg, out_dir=out)
    print_result(result)
    if not result.summary["feasible"]:
        typer.echo(f"infeasible: no configuration met the constraint; the closest is saved "
                   f"in {out}/best.json", err=True)
        raise typer.Exit(EXIT_INFEASIBLE)


def register(app: typer.Typer) -> None:
    """Add the ``tune`` command to ``app``."""
    app.command("tune")(tune_command)
