"""Objectives: what "best" means, as Optuna directions and values.

Three kinds:

* ``min_cost`` — minimise size (or BitOPs, or latency) subject to
  ``accuracy drop <= tolerance`` (points). Value (minimised): ``cost / fp32 cost``
  (in (0, 1]) when feasible, else ``1 + (drop - tolerance)``, so every feasible
  configuration beats every infeasible one and closer-to-feasible is better.
* ``max_accuracy`` — maximise accuracy subject to ``cost <= budget`` (bytes,
  BitOPs or ms). Cost is analytic, so an over-budget configuration is rejected
  without evaluation. Value (maximised): accuracy in percent when feasible, else
  ``-100 * (cost / budget - 1)`` (negative).
* ``pareto`` — two objectives, maximise accuracy and minimise cost.

Every trial also records the constraint violation (``<= 0`` is feasible) with
``trial.set_constraint`` so constraint-aware samplers (TPE, NSGA-II) use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bitsmith.tune.errors import TuneError
from bitsmith.tune.evaluator import Measurement

KINDS = ("min_cost", "max_accuracy", "pareto")
METRICS = ("size", "bitops", "latency")


def cost_value(m: Measurement, metric: str) -> float:
    """The measurement's cost in the metric's unit: bytes, BitOPs per example, or ms."""
    if metric == "size":
        return float(m.size_bytes)
    if metric == "bitops":
        return float(m.bitops)
    if m.latency_ms is None:
        raise TuneError("metric 'latency' needs an evaluator whose backend measures latency "
                        "(an integer runtime); the PyTorch evaluator does not")
    return float(m.latency_ms)


def fp32_cost(m: Measurement, metric: str) -> float:
    """The float model's cost in the metric's unit (latency: the quantized one, i.e. ratio 1)."""
    if metric == "size":
        return float(m.fp32_bytes)
    if metric == "bitops":
        return float(m.fp32_bitops)
    return cost_value(m, metric)


@dataclass(frozen=True)
class Objective:
    """What the tuner optimises (see the module docstring).

    Attributes:
        kind: ``"min_cost"``, ``"max_accuracy"`` or ``"pareto"``.
        metric: ``"size"`` (bytes, scales included), ``"bitops"`` or ``"latency"`` (ms).
        tolerance: maximum accuracy drop in points (``min_cost``).
        budget: maximum cost in the metric's unit (``max_accuracy``).
    """

    kind: str = "min_cost"
    metric: str = "size"
    tolerance: float | None = 1.0
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TuneError(f"objective kind {self.kind!r} is unknown; use one of {KINDS}")
        if self.metric not in METRICS:
            raise TuneError(f"metric {self.metric!r} is unknown; use one of {METRICS}")
        if self.kind == "min_cost":
            if self.tolerance is None or not math.isfinite(self.max_drop):
                raise TuneError("min_cost needs a finite accuracy tolerance in points")
            if self.max_drop < 0:
                raise TuneError(f"tolerance must be >= 0 points, got {self.tolerance}")
        if self.kind == "max_accuracy":
            if self.budget is None or not self.max_cost > 0:
                raise TuneError(f"max_accuracy needs a positive cost budget, got {self.budget}")

    @property
    def max_drop(self) -> float:
        """The tolerance in points (a ``min_cost`` objective always has one)."""
        if self.tolerance is None:
            raise TuneError(f"a {self.kind} objective has no accuracy tolerance")
        return float(self.tolerance)

    @property
    def max_cost(self) -> float:
        """The budget in the metric's unit (a ``max_accuracy`` objective always has one)."""
        if self.budget is None:
            raise TuneError(f"a {self.kind} objective has no cost budget")
        return float(self.budget)

    # ---------------------------------------------------------------- optuna
    @property
    def directions(self) -> list[str]:
        if self.kind == "min_cost":
            return ["minimize"]
        if self.kind == "max_accuracy":
            return ["maximize"]
        return ["maximize", "minimize"]

    def describe(self) -> str:
        unit = {"size": "bytes", "bitops": "BitOPs", "latency": "ms"}[self.metric]
        if self.kind == "min_cost":
            return f"minimise {self.metric} s.t. accuracy drop <= {self.tolerance} points"
        if self.kind == "max_accuracy":
            return f"maximise accuracy s.t. {self.metric} <= {self.budget:g} {unit}"
        return f"Pareto front of accuracy vs {self.metric}"

    def rule(self) -> str:
        """How the run's chosen configuration is picked (one sentence; it is always a point
        of the measured Pareto front of the validation scores)."""
        if self.kind == "min_cost":
            return (f"smallest {self.metric} among the trials within {self.tolerance:g} points "
                    "of FP32 on the validation data (ties: the more accurate); it is the "
                    "cheapest point of the validation Pareto front that meets the tolerance")
        if self.kind == "max_accuracy":
            return (f"most accurate on the validation data among the trials with {self.metric} "
                    f"<= {self.budget:g} (ties: the cheaper); a point of the validation "
                    "Pareto front")
        return "most accurate point of the validation Pareto front of accuracy vs " + self.metric

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "metric": self.metric, "tolerance": self.tolerance,
                "budget": self.budget}

    # ------------------------------------------------------------ feasibility
    def needs_accuracy(self, m: Measurement) -> bool:
        """False when the configuration is rejected on cost alone (over a budget)."""
        return not (self.kind == "max_accuracy" and self.metric != "latency"
                    and cost_value(m, self.metric) > self.max_cost)

    def violation(self, m: Measurement) -> float:
        """Constraint value: ``<= 0`` feasible (points of drop, or relative over-budget)."""
        if self.kind == "min_cost":
            return float(m.drop) - self.max_drop
        if self.kind == "max_accuracy":
            return cost_value(m, self.metric) / self.max_cost - 1.0
        return 0.0

    def feasible(self, m: Measurement) -> bool:
        return self.violation(m) <= 0.0

    def values(self, m: Measurement) -> float | tuple[float, float]:
        """The Optuna value(s) of a measurement."""
        if self.kind == "pareto":
            return (float(m.accuracy), cost_value(m, self.metric))
        return self.score(m.accuracy, m.drop, cost_value(m, self.metric), fp32_cost(m, self.metric))

    def score(self, accuracy: float, drop: float, cost: float, fp32: float) -> float:
        """Single-objective value from accuracy (%), drop (points) and cost (metric unit)."""
        if self.kind == "min_cost":
            excess = drop - self.max_drop
            return cost / fp32 if excess <= 0 else 1.0 + excess
        if self.kind == "max_accuracy":
            over = cost / self.max_cost - 1.0
            return accuracy if over <= 0 else -100.0 * over
        raise TuneError("a Pareto objective has two values, not one score")

    def better(self, a: float, b: float) -> bool:
        """Is single-objective value ``a`` better than ``b``?"""
        return a < b if self.kind == "min_cost" else a > b

    def acquisition(self, pred_drop: float, accuracy_ref: float, cost: float, fp32: float,
                    weight: float = 0.5) -> float:
        """Higher-is-better score of a *predicted* drop for the cost-model sampler.

        ``pareto`` uses a weighted sum of normalised accuracy and cost (``weight``
        in [0, 1] on accuracy, drawn per trial by the sampler).
        """
        if self.kind == "pareto":
            return weight * (accuracy_ref - pred_drop) / 100.0 - (1 - weight) * cost / fp32
        if self.kind == "max_accuracy" and cost > self.max_cost:
            return -math.inf
        value = self.score(accuracy_ref - pred_drop, pred_drop, cost, fp32)
        return -value if self.kind == "min_cost" else value
