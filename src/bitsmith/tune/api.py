"""The tuner's producer contract: :func:`tune` (``bitsmith tune``; docs/tune.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from bitsmith.cost import estimate
from bitsmith.errors import BitsmithError
from bitsmith.result import QuantizationResult, cost_summary, validation_summary
from bitsmith.scoring import EvaluateFn, check_validation
from bitsmith.tune.config import TuneConfig
from bitsmith.tune.evaluator import TorchEvaluator
from bitsmith.tune.results import TuneResult
from bitsmith.tune.runner import run_study


def tune(model: nn.Module, calibration: Any, validation: Any = None, *,
         evaluate: EvaluateFn | None = None, config: TuneConfig | None = None,
         out_dir: str | Path | None = None) -> QuantizationResult:
    """Post-training auto-tuning (Quantune and beyond): the best configuration of
    ``config.space`` for ``config``'s objective, measured on the validation data.

    Args:
        model: the trained float model (not modified).
        calibration: calibration inputs (tensor ``(N, ...)``, ``(inputs, labels)``, a
            dataset or a ``DataLoader``).
        validation: labelled validation data (never the test set); with ``evaluate`` it
            is only counted.
        evaluate: ``evaluate(model) -> float``, higher is better (default: top-1 % on
            ``validation``). A metric that fails inside a trial fails that trial only.
        config: the :class:`TuneConfig` (default ``TuneConfig()``: smallest size within
            1 point, XGBoost cost model, 100 trials).
        out_dir: the run directory (``bitsmith report OUT_DIR``); the Optuna study lives
            there too (``study.db``), so a rerun resumes.

    Returns:
        :class:`~bitsmith.result.QuantizationResult`; ``details`` is the
        :class:`~bitsmith.tune.results.TuneResult`. When no trial met the objective's
        constraint, ``policy`` is the closest one and ``summary["feasible"]`` is False.

    Raises:
        InputError: bad data, space or storage (exit code 2).
        InfeasibleBudgetError: a ``max_accuracy`` budget below the cheapest configuration.
    """
    cfg = config or TuneConfig()
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # bitsmith reports progress itself
    backend = None
    if cfg.backend == "onnxruntime":
        from bitsmith.tune.runtime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend()
    evaluator = TorchEvaluator(model, calibration, validation, cfg.make_space(),
                               stages=cfg.stages, backend=backend, evaluate=evaluate,
                               cache=None if out_dir is None else Path(out_dir) /
                               "reconstruction")
    objective = cfg.make_objective()
    scorer = evaluator.scorer
    guard = check_validation(evaluator.fp32_accuracy, scorer.examples,
                             cfg.tolerance if objective.kind == "min_cost" else None,
                             scorer.is_top1, scorer.name)
    meta = {"guard": guard.to_dict(), "model": type(model).__name__,
            "eval_set": f"validation: {scorer.describe()}", **cfg.labels}
    study = run_study(evaluator, cfg, out_dir=out_dir, run_meta=meta)
    return _result(evaluator, study, cfg, guard.to_dict(), out_dir, time.perf_counter() - t0)


def _result(evaluator: TorchEvaluator, study: TuneResult, cfg: TuneConfig,
            guard: dict[str, Any], out_dir: str | Path | None, seconds: float
            ) -> QuantizationResult:
    pick = study.best or study.closest
    if pick is None:
        failed = [t for t in study.trials if t.state == "FAIL"]
        raise BitsmithError(f"no trial of study {study.study_name!r} finished "
                            f"({len(failed)} failed); see trials.csv for their errors")
    policy = evaluator.policy(pick.config)
    qmodel = evaluator.quantized_model(pick.config).eval()
    recon = qmodel.bitsmith.reconstruction
    if recon is not None and out_dir is not None:  # the chosen policy's learned rounding
        from bitsmith.rundir import write_reconstruction

        write_reconstruction(out_dir, recon)
        if (Path(out_dir) / "report.html").is_file():
            from bitsmith.report import write_report

            write_report(out_dir)
    objective = study.objective
    summary = {
        "producer": "tune", "chosen": f"trial {pick.number}", "rule": objective.rule(),
        "feasible": study.feasible, "objective": objective.describe(),
        "validation": validation_summary(evaluator.scorer, study.fp32_accuracy,
                                         pick.measurement.get("accuracy")),
        "test": None, "cost": cost_summary(estimate(evaluator.table, policy)),
        "budget": {"metric": objective.metric, "limit": objective.budget,
                   "tolerance": objective.tolerance},
        "guard": guard, "trials": study.counts(), "stopped": study.stopped,
        "config": pick.config, "seconds": seconds}
    if recon is not None:
        summary["reconstruction"] = recon.summary()
    return QuantizationResult(policy, qmodel, summary,
                              Path(out_dir) if out_dir is not None else None, study)
