"""The ``bitsmith tune`` command. Wire it with ``register(app)``.

Exit codes: 0 success, 2 bad input, 3 infeasible (no configuration met the
constraint; the closest one is reported and saved in ``best.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from bitsmith.policy import Policy, PolicyError
from bitsmith.tune.errors import TuneError

EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3
MODELS = ("resnet20", "resnet32", "digits")
console = Console(stderr=False)


VAL_SPLITS = ("jpeg", "lossless")
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

        if val_split not in VAL_SPLITS:
            raise TuneError(f"unknown validation split {val_split!r}; use one of {VAL_SPLITS}")
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
    raise TuneError(f"unknown model {model!r}; use one of {MODELS}")


def register(app: typer.Typer) -> None:
    """Add the ``tune`` command to ``app``."""

    @app.command("tune")
    def tune_cmd(
        model: str = typer.Option("resnet20", help=f"Built-in problem: {', '.join(MODELS)}."),
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
        out: Path = typer.Option(Path("runs/tune"), help="Output folder."),
        seed: int = typer.Option(0, help="Sampler seed."),
        val_size: int = typer.Option(2000, help="Validation images (CIFAR models)."),
        val_split: str = typer.Option("jpeg", help="CIFAR validation: jpeg (protocol val "
                                                   "split) or lossless (held-out lossless "
                                                   "training images; calibration on 1,000)."),
        transfer: list[Path] = typer.Option(None, help="transfer.json of earlier studies."),
        init_policy: list[Path] = typer.Option(None, help="Warm-start policy files."),
        no_prune: bool = typer.Option(False, help="Disable early stopping."),
        no_progress: bool = typer.Option(False, help="No progress bars."),
        epochs: int = typer.Option(30, help="Training epochs of the digits model."),
    ) -> None:
        """Auto-tune post-training quantization (Quantune and beyond); resumable, multi-worker.

        Example: bitsmith tune --model resnet20 --tolerance 1 --n-trials 100 --out runs/r20
        Several workers: run the same command with --storage URL --study NAME N times.
        """
        import optuna

        from bitsmith.cost.budget import InfeasibleBudgetError
        from bitsmith.tune.objectives import Objective
        from bitsmith.tune.runner import tune
        from bitsmith.tune.samplers import STRATEGIES
        from bitsmith.tune.space import TuneSpace
        from bitsmith.tune.study import open_storage
        from bitsmith.tune.transfer import load_transfer

        optuna.logging.set_verbosity(logging.WARNING)
        try:
            kind = {"min-cost": "min_cost", "max-accuracy": "max_accuracy",
                    "pareto": "pareto"}.get(objective)
            if kind is None:
                raise TuneError(f"unknown objective {objective!r}; use min-cost, "
                                "max-accuracy or pareto")
            obj = Objective(kind, metric, tolerance=tolerance, budget=budget)
            if strategy not in STRATEGIES:
                raise TuneError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
            if storage is not None:
                open_storage(storage)           # fail fast, before loading the model
            sp = TuneSpace.load(space) if space is not None else \
                TuneSpace.from_dict({"preset": preset})
            records = [r for p in (transfer or []) for r in load_transfer(p)]
            policies = [Policy.load(p) for p in (init_policy or [])]
            if backend not in ("torch", "onnxruntime"):
                raise TuneError(f"unknown backend {backend!r}; use torch or onnxruntime")
            net, calib, val = load_problem(model, val_size, seed, epochs, val_split)
            evaluator = None
            if backend == "onnxruntime":
                from bitsmith.tune.evaluator import TorchEvaluator
                from bitsmith.tune.runtime import OnnxRuntimeBackend

                evaluator = TorchEvaluator(net, calib, val, sp, backend=OnnxRuntimeBackend())
            result = tune(net, calib, val, space=sp, objective=obj, strategy=strategy,
                          evaluator=evaluator,
                          run_meta={"model": model, "dataset": model if model == "digits"
                                    else "CIFAR-10"},
                          n_trials=n_trials, timeout=timeout, storage=storage, study_name=study,
                          out_dir=out, seed=seed, transfer=records, initial_policies=policies,
                          prune=not no_prune, progress=not no_progress, log=console.print)
        except InfeasibleBudgetError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(EXIT_INFEASIBLE) from None
        except (TuneError, PolicyError, FileNotFoundError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        console.print(result.summary())
        names = ", ".join(sorted(p.name for p in result.files.values()))
        console.print(f"outputs in {out}/ ({names})")
        if not result.feasible:
            console.print("[red]infeasible:[/red] no configuration met the constraint; the "
                          f"closest is saved in {out}/best.json")
            raise typer.Exit(EXIT_INFEASIBLE)
