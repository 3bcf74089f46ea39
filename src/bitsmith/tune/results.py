"""Reading a study back: per-trial records, the best configuration, the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bitsmith.pareto import pareto_front
from bitsmith.tune.distinct import is_duplicate
from bitsmith.tune.errors import TuneError
from bitsmith.tune.evaluator import Measurement
from bitsmith.tune.objectives import Objective, cost_value

MEASUREMENT_ATTR = "measurement"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study, flattened for logs and reports.

    ``measurement`` holds the :class:`~bitsmith.tune.evaluator.Measurement`
    fields (accuracy %, drop in points, size in bytes, BitOPs, ...);
    ``violation <= 0`` means the objective's constraint holds.
    """

    number: int
    state: str
    config: dict[str, Any]
    measurement: dict[str, Any]
    values: list[float] | None
    violation: float | None
    seconds: float | None
    error: str | None = None  # why a failed trial failed (e.g. the metric raised)

    @property
    def feasible(self) -> bool:
        return self.violation is not None and self.violation <= 0

    @property
    def value(self) -> float:
        """The (first) objective value; a trial without one is an error here."""
        if not self.values:
            raise TuneError(f"trial {self.number} ({self.state}) has no objective value")
        return self.values[0]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "config": self.config,
                "values": self.values, "violation": self.violation, "feasible": self.feasible,
                "seconds": self.seconds, "error": self.error,
                **{f"m.{k}": v for k, v in self.measurement.items()}}


def record_of(t: FrozenTrial, objective: Objective) -> TrialRecord:
    """The record of a finished (or running) trial."""
    m = t.user_attrs.get(MEASUREMENT_ATTR, {})
    violation = None
    if m and t.state == TrialState.COMPLETE:
        v = objective.violation(Measurement.from_dict(m))
        violation = None if math.isnan(v) else v
    seconds = None
    if t.datetime_start and t.datetime_complete:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    state = "DUPLICATE" if is_duplicate(t) else t.state.name   # handed back, not evaluated
    return TrialRecord(t.number, state, dict(t.params), dict(m),
                       list(t.values) if t.values is not None else None, violation, seconds,
                       t.user_attrs.get("error"))


@dataclass
class TuneResult:
    """Outcome of :func:`bitsmith.tune.tune` (shared by every worker of the study).

    Attributes:
        best: the best feasible trial (``min_cost``: smallest within tolerance;
            ``max_accuracy``: most accurate within budget; ``pareto``: most accurate
            on the front), or ``None``.
        feasible: whether ``best`` exists.
        closest: when infeasible, the trial closest to the constraint.
        front: the Pareto front of accuracy vs cost (completed trials).
        trials: every trial of the study.
        budget: the study's trial budget; ``stopped``: why this worker stopped
            (``"budget"`` or ``"timeout"``).
    """

    study_name: str
    storage: str | None
    objective: Objective
    fp32_accuracy: float
    trials: list[TrialRecord]
    best: TrialRecord | None
    closest: TrialRecord | None
    front: list[TrialRecord]
    budget: int
    stopped: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def summary(self) -> str:
        """A few lines: the objective, the budget used, the best (or closest) configuration."""
        lines = [f"study {self.study_name!r}: {self.objective.describe()}",
                 f"trials: {self.counts()} (budget {self.budget}, stopped on {self.stopped})"]
        pick = self.best or self.closest
        if pick is None:
            lines.append("no completed trial")
            return "\n".join(lines)
        m = pick.measurement
        tag = "best" if self.best is not None else "INFEASIBLE - closest"
        lines.append(f"{tag}: trial {pick.number}: accuracy {m.get('accuracy', math.nan):.2f}% "
                     f"(FP32 {m.get('fp32_accuracy', math.nan):.2f}%, drop "
                     f"{m.get('drop', math.nan):.2f}), {m.get('size_bytes', 0) / 1024:.1f} KiB "
                     f"({m.get('compression', math.nan):.2f}x), avg weight bits "
                     f"{m.get('avg_weight_bits', math.nan):.2f}")
        return "\n".join(lines)


def summarize(study: optuna.Study, objective: Objective, budget: int, stopped: str,
              storage: str | None, fp32_accuracy: float) -> TuneResult:
    """Build the :class:`TuneResult` of a study from its trials."""
    trials = [record_of(t, objective) for t in study.get_trials(deepcopy=False)]
    done = [r for r in trials if r.state == "COMPLETE" and r.measurement
            and r.measurement.get("accuracy") is not None]
    best = closest = None
    feasible = [r for r in done if r.feasible]
    front = _front(done, objective)
    if objective.kind == "pareto":
        best = max(front, key=lambda r: r.measurement["accuracy"]) if front else None
    else:
        if feasible:
            best = _best_single(feasible, objective)
        elif done:
            closest = min(done, key=lambda r: r.violation if r.violation is not None
                          else math.inf)
    return TuneResult(study.study_name, storage, objective, fp32_accuracy, trials, best,
                      closest, front, budget, stopped)


def _best_single(records: Sequence[TrialRecord], objective: Objective) -> TrialRecord:
    def key(r: TrialRecord) -> tuple[float, float]:
        v = r.value
        if objective.kind == "min_cost":  # ties (equal cost) broken by accuracy
            return (v, -r.measurement["accuracy"])
        # ties (equal accuracy) broken by cost: the pick stays on the Pareto front
        return (-v, cost_value(Measurement.from_dict(r.measurement), objective.metric))
    return min(records, key=key)


def _front(records: Sequence[TrialRecord], objective: Objective) -> list[TrialRecord]:
    costs = [cost_value(Measurement.from_dict(r.measurement), objective.metric) for r in records]
    return [records[i] for i in pareto_front(costs, [r.measurement["accuracy"] for r in records])]
