"""The ``analyze`` producer: sensitivities -> integer-program allocations at budgets ->
policies scored on the validation data -> the chosen one, in a run directory with its report.

:func:`analyze` follows the producer contract (``docs/overview.md``, "One contract").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from bitsmith.allocation import (
    Allocation,
    CandidateSpace,
    Sensitivity,
    allocate,
    bit_candidates,
    size_budget,
)
from bitsmith.allocation.candidates import DEFAULT_BITS
from bitsmith.config import Config, ConfigError
from bitsmith.cost import Budget, estimate
from bitsmith.errors import InputError
from bitsmith.graph import LayerTable
from bitsmith.pareto import best_within
from bitsmith.policy import FIRST_LAST_CHOICES, FLOAT, INT8, Policy, QSpec, Rounding
from bitsmith.quantize import CalibrationStats, collect_stats, prepare, quantize
from bitsmith.result import QuantizationResult, cost_summary, plain, validation_summary
from bitsmith.scoring import EvaluateFn, Scorer, as_batches, check_validation
from bitsmith.sensitivity import estimate_fisher, estimate_hessian, measure_sensitivity

METHODS = ("measured", "hessian", "fisher")


@dataclass(frozen=True)
class AnalyzeConfig(Config):
    """Knobs of :func:`analyze` (``bitsmith analyze``; docs/analyze_and_report.md).

    Attributes:
        bits: candidate weight bit widths of every decided layer.
        methods: sensitivity estimators: ``measured`` (KL / loss / accuracy, one layer
            quantized at a time), ``hessian`` (HAWQ-V2), ``fisher`` (empirical Fisher).
        avg_bits: average weight-bit budgets: the uniform policy and the allocation at each.
        budget: the budget of the chosen policy (default: the size of ``avg_bits[0]``).
        score: the sensitivity score the allocation minimises (default ``measured_kl`` when
            measured, else the first estimate).
        weight_scheme, granularity: the weight quantizer of every candidate.
        act_bits: input-activation bits of every candidate (0 = float).
        first_last: ``same`` (decided like the rest), ``int8`` or ``float`` (kept fixed).
        rounding: ``nearest``, or a learned rounding (``adaround``, ``brecq``, ``qdrop``;
            ``docs/reconstruction.md``) given to every policy (uniform and allocated).
            The measured sensitivity then quantizes each (layer, bits) candidate *with*
            reconstruction: the layer alone, AdaRound on its float input (independent of
            the other layers, so every candidate is learned once and cached in
            ``OUT/reconstruction``); the Hessian and Fisher estimates stay analytic.
        rounding_iterations: reconstruction steps per layer or block.
        hessian_iters, hessian_examples: Hutchinson iterations and examples.
        sensitivity_examples: validation examples the estimators use.
        progress: show progress.
        report: write ``report.html`` into the run directory.
        labels: names shown in the run directory and report (``model``, ``dataset``).
    """

    bits: tuple[int, ...] = DEFAULT_BITS
    methods: tuple[str, ...] = METHODS
    avg_bits: tuple[float, ...] = (4.0, 3.0)
    budget: Budget | None = None
    score: str | None = None
    weight_scheme: str = "uniform_symmetric"
    granularity: Literal["tensor", "channel"] = "channel"
    act_bits: int = 8
    first_last: Literal["same", "int8", "float"] = "same"
    rounding: Literal["nearest", "adaround", "brecq", "qdrop"] = "nearest"
    rounding_iterations: int = 1000
    hessian_iters: int = 32
    hessian_examples: int = 256
    sensitivity_examples: int = 1000
    progress: bool = False
    report: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"AnalyzeConfig.methods {list(self.methods)}: use some of "
                              f"{', '.join(METHODS)}")
        if not self.avg_bits and self.budget is None:
            raise ConfigError("AnalyzeConfig: give avg_bits or a budget")
        if isinstance(self.rounding_iterations, bool) or self.rounding_iterations < 1:
            raise ConfigError(f"AnalyzeConfig.rounding_iterations must be >= 1, got "
                              f"{self.rounding_iterations}")
        if self.first_last not in FIRST_LAST_CHOICES:
            raise ConfigError(f"AnalyzeConfig.first_last {self.first_last!r}: use one of "
                              f"{', '.join(FIRST_LAST_CHOICES)}")

    def make_rounding(self, for_sensitivity: bool = False) -> Rounding | str:
        """The Policy's rounding (``for_sensitivity``: the per-layer AdaRound on float
        inputs that measures each candidate)."""
        if self.rounding == "nearest":
            return "nearest"
        if for_sensitivity:
            return Rounding("adaround", iterations=self.rounding_iterations, inputs="float")
        return Rounding(self.rounding, iterations=self.rounding_iterations)

    def weight(self) -> QSpec:
        return QSpec(self.weight_scheme, max(self.bits), self.granularity)

    def act(self) -> QSpec | None:
        return None if self.act_bits == 0 else QSpec("uniform_asymmetric", self.act_bits)


@dataclass
class AnalysisResult:
    """The analysis in full (``QuantizationResult.details``; all of it is in ``run_dir``)."""

    run_dir: Path | None
    sensitivity: Sensitivity
    allocations: dict[float, Allocation] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def _space(table: LayerTable, cfg: AnalyzeConfig) -> tuple[CandidateSpace, Policy]:
    """The candidates of the decided layers and the base policy of the fixed ones."""
    names = table.names
    base = Policy({})
    if cfg.first_last != "same" and len(names) > 2:
        edge = INT8 if cfg.first_last == "int8" else FLOAT
        base = Policy({names[0]: edge, names[-1]: edge})
    layers = [n for n in names if n not in base]
    return bit_candidates(table, cfg.weight(), cfg.bits, cfg.act(), layers=layers), base


def _sensitivity(model: nn.Module, space: CandidateSpace, data: Any, stats: CalibrationStats,
                 cfg: AnalyzeConfig, base: Policy, log: Callable[[str], None],
                 cache: Path | None) -> Sensitivity:
    parts = []
    if "measured" in cfg.methods:
        rounding = cfg.make_rounding(for_sensitivity=True)
        how = "" if rounding == "nearest" else f", each reconstructed ({rounding.short()})"
        log(f"measured sensitivity: {space.size} (layer, bits) pairs{how}")
        parts.append(measure_sensitivity(model, space, data, calibration=stats,
                                         base=base.with_options(rounding=rounding),
                                         max_examples=cfg.sensitivity_examples,
                                         progress=cfg.progress, cache=cache))
    if "hessian" in cfg.methods:
        parts.append(estimate_hessian(model, space, data, n_iter=cfg.hessian_iters,
                                      max_examples=cfg.hessian_examples, progress=cfg.progress))
    if "fisher" in cfg.methods:
        parts.append(estimate_fisher(model, space, data, max_examples=cfg.sensitivity_examples,
                                     progress=cfg.progress))
    sens = parts[0]
    for p in parts[1:]:
        sens = sens.merge(p)
    for m in sens.metrics:
        log(f"  {m}: {sens.seconds[m]:.1f} s")
    return sens


def _budgets(space: CandidateSpace, cfg: AnalyzeConfig, base: Policy
             ) -> tuple[list[tuple[str, Budget]], Budget]:
    """``[(label, budget) per allocation]`` and the budget of the chosen policy."""
    budgets = [(f"{b:g}-bit size", Budget(size_bytes=size_budget(space, b, base)))
               for b in cfg.avg_bits]
    if cfg.budget is not None:
        budgets.insert(0, ("budget", cfg.budget))
    return budgets, budgets[0][1]


def analyze(model: nn.Module, calibration: Any, validation: Any = None, *,
            evaluate: EvaluateFn | None = None, config: AnalyzeConfig | None = None,
            out_dir: str | Path | None = None,
            log: Callable[[str], None] = lambda _: None) -> QuantizationResult:
    """Per-layer sensitivity and budgeted bit allocation, scored and chosen on validation.

    Steps: calibration statistics (once) -> sensitivities by ``config.methods`` on the
    labelled validation data -> for each budget: the uniform policy at that width and
    the integer-program allocation with the same size -> every policy scored on the
    validation data -> the chosen one: the most accurate within the first budget.

    Args:
        model: the trained float model (not modified).
        calibration: calibration batches (activation ranges), e.g. a DataLoader.
        validation: labelled validation data (sensitivity and the choice); never the test
            set.
        evaluate: ``evaluate(model) -> float``, higher is better (default: top-1 % on
            ``validation``); the estimators still need labelled ``validation``.
        config: the :class:`AnalyzeConfig`.
        out_dir: the run directory (``None``: write nothing).
        log: receives one line per step.

    Raises:
        InfeasibleBudgetError: a budget below the smallest allocation (before the analysis).
        InputError: no labelled validation data.
    """
    cfg = config or AnalyzeConfig()
    t0 = time.perf_counter()
    if validation is None:
        raise InputError("analyze needs labelled validation data: the sensitivity "
                         "estimators measure on it")
    data = as_batches(validation)
    learned = cfg.rounding != "nearest"
    stats = collect_stats(model, calibration, keep_inputs=learned)
    cache = Path(out_dir) / "reconstruction" if learned and out_dir is not None else None
    _, table, _ = prepare(model, stats.example_inputs)
    space, base = _space(table, cfg)
    budgets, chosen_budget = _budgets(space, cfg, base)
    zeros = {n: [0.0] * len(space[n]) for n in space}
    for _, b in budgets:  # fail fast: an infeasible budget before the expensive analysis
        allocate(space, zeros, b, base=base)
    scorer = Scorer(validation, evaluate)
    fp32 = scorer(model)
    guard = check_validation(fp32, scorer.examples, None, scorer.is_top1, scorer.name)
    sens = _sensitivity(model, space, data, stats, cfg, base, log, cache)
    metric = cfg.score or ("measured_kl" if "measured_kl" in sens.metrics else sens.metrics[0])
    trials: dict[str, Policy] = {"FP32": Policy({})}
    details = AnalysisResult(None if out_dir is None else Path(out_dir), sens)
    for label, b in budgets:
        bits = float(label.split("-")[0]) if label.endswith("bit size") else None
        if bits is not None and bits.is_integer() and int(bits) in cfg.bits:
            weight = cfg.weight().replace(bits=int(bits))
            trials[f"uniform W{int(bits)}"] = Policy(
                {**dict(base.items()), **Policy.uniform(space.names, weight, cfg.act())})
        alloc = allocate(space, sens, b, metric=metric, base=base)
        details.allocations[bits if bits is not None else 0.0] = alloc
        trials[f"ILP {label} ({metric})"] = alloc.policy
    scores = {}
    rounding = cfg.make_rounding()
    trials = {n: p if n == "FP32" else p.with_options(rounding=rounding)
              for n, p in trials.items()}
    for name, policy in trials.items():
        scores[name] = fp32 if name == "FP32" else scorer(
            quantize(model, policy, calibration=stats, cache=cache))
        log(f"  {name}: {scores[name]:.2f} (validation)")
    details.accuracies = scores
    names = list(trials)
    sizes = [estimate(table, trials[n]).size_bytes for n in names]
    pick = best_within(sizes, [scores[n] for n in names], chosen_budget.size_bytes
                       if chosen_budget.size_bytes is not None else float("inf"))
    chosen = names[pick if pick is not None else 0]
    rule = (f"most accurate on the validation data among the policies within the first "
            f"budget ({chosen_budget.describe()}; ties: the smaller); a point of the "
            "validation Pareto front")
    policy = trials[chosen]
    summary = {
        "producer": "analyze", "chosen": chosen, "rule": rule,
        "validation": validation_summary(scorer, fp32, scores[chosen]), "test": None,
        "cost": cost_summary(estimate(table, policy)), "budget": chosen_budget.to_dict(),
        "guard": guard.to_dict(), "allocation_metric": metric,
        "scores": {n: scores[n] for n in names}, "seconds": time.perf_counter() - t0}
    qmodel = quantize(model, policy, calibration=stats, cache=cache).eval()
    recon = qmodel.bitsmith.reconstruction
    if recon is not None:
        summary["reconstruction"] = recon.summary()
    if out_dir is not None:
        details.report = _write_run(Path(out_dir), table, sens, trials, scores, chosen, rule,
                                    summary, cfg, type(model).__name__, recon)
    return QuantizationResult(policy, qmodel, summary, details.run_dir, details)


def _write_run(out: Path, table: LayerTable, sens: Sensitivity, trials: dict[str, Policy],
               scores: dict[str, float], chosen: str, rule: str, summary: dict[str, Any],
               cfg: AnalyzeConfig, model_name: str, recon: Any = None) -> Path | None:
    from bitsmith.rundir import RunWriter

    run = RunWriter(out, model=cfg.labels.get("model", model_name),
                    dataset=cfg.labels.get("dataset", ""),
                    eval_set=f"validation: {summary['validation']['metric']}",
                    producer="bitsmith analyze", guard=summary["guard"],
                    notes={"allocation_metric": summary["allocation_metric"],
                           "config": plain(cfg.to_dict())})
    run.write_layers(table)
    run.write_sensitivity(sens)
    run.set_fp32(accuracy=scores["FP32"])
    for name, policy in trials.items():
        run.add_trial(name, policy=policy, accuracy=scores[name],
                      source="float" if name == "FP32" else name.split(" ")[0].lower())
    run.choose(chosen, rule=rule)
    if recon is not None:
        run.write_reconstruction(recon)
    if not cfg.report:
        return None
    from bitsmith.report import write_report

    return write_report(out)
