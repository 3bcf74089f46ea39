"""Budgeted bit allocation as a 0-1 integer program (``scipy.optimize.milp``, HiGHS).

Variables ``x[l, c]`` in {0, 1}: layer ``l`` takes candidate ``c``. ::

    minimise    Σ_l Σ_c s[l, c] · x[l, c]             (sensitivity: bigger = worse)
    subject to  Σ_c x[l, c] = 1                        for every decided layer
                K_k + Σ_l Σ_c cost_k[l, c] · x[l, c] <= budget_k   for every budget k

Costs come from :func:`bitsmith.cost.layer_cost`, so that the allocated
Policy's ``bitsmith.cost.estimate(...)`` equals the reported totals exactly:
``size_bytes`` = parameters outside quantizable layers (4 B each) + fixed
layers + Σ chosen layer bytes (packed weights + quantizer overhead + bias);
``bitops`` = Σ MACs·b_w·b_a; ``avg_weight_bits`` = weight-count-weighted mean
bits (float = 32); ``latency`` = ``latency_offset`` + Σ chosen entries of the
caller's per-layer, per-candidate table (any unit, e.g. ms from a runtime LUT).

The result is an :class:`Allocation` whose ``.policy`` is the allocated Policy:
the warm start for the tuner and the differentiable search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.scores import Sensitivity
from bitsmith.cost import layer_cost, weight_bytes
from bitsmith.cost.budget import KINDS, Budget, InfeasibleBudgetError
from bitsmith.cost.model import FLOAT_BITS
from bitsmith.policy import LayerSpec, Policy

LatencyLookup = Mapping[str, Sequence[float]] | Callable[[str, LayerSpec], float]


@dataclass(frozen=True)
class Allocation:
    """The integer program's answer.

    Attributes:
        policy: the allocated Policy (fixed layers keep their ``base`` spec).
        choices: ``layer -> index into its candidates``.
        objective: Σ of the chosen sensitivity scores (the score's units).
        size_bytes, bitops, avg_weight_bits: totals of ``policy`` (cost model).
        latency: total latency (``None`` without a latency table).
        metric: the sensitivity score used.
        seconds: solver wall-clock time.
    """

    policy: Policy
    choices: dict[str, int]
    objective: float
    size_bytes: int
    bitops: int
    avg_weight_bits: float
    latency: float | None
    metric: str
    budget: Budget
    seconds: float
    costs: dict[str, float] = field(default_factory=dict)


@dataclass
class _Problem:
    names: list[str]
    offsets: list[int]                  # start column of each layer
    widths: list[int]                   # number of candidates of each layer
    cost: dict[str, np.ndarray]         # kind -> (n_vars,)
    const: dict[str, float]             # kind -> constant part


def _build(space: CandidateSpace, base: Policy, latency: LatencyLookup | None,
           latency_offset: float) -> _Problem:
    table = space.table
    names = space.names
    offsets, cols = [], 0
    for n in names:
        offsets.append(cols)
        cols += len(space[n])
    n_total = max(sum(i.weight_params for i in table), 1)
    cost = {k: np.zeros(cols) for k in KINDS}
    in_layers = sum(i.weight_params + i.bias_params for i in table)
    const = {"size_bytes": 4.0 * (table.total_params - in_layers), "bitops": 0.0,
             "avg_weight_bits": 0.0, "latency": float(latency_offset)}
    for info in table:
        if info.name in space:
            continue
        c = layer_cost(info, base.get(info.name))
        const["size_bytes"] += c.total_bytes
        const["bitops"] += c.bitops
        const["avg_weight_bits"] += c.weight_bits * info.weight_params / n_total
    for n, start in zip(names, offsets):
        info = table[n]
        for i, spec in enumerate(space[n]):
            c = layer_cost(info, spec)
            cost["size_bytes"][start + i] = c.total_bytes
            cost["bitops"][start + i] = c.bitops
            cost["avg_weight_bits"][start + i] = c.weight_bits * info.weight_params / n_total
            if latency is not None:
                cost["latency"][start + i] = _latency_of(latency, n, i, spec)
    return _Problem(names, offsets, [len(space[n]) for n in names], cost, const)


def _latency_of(latency: LatencyLookup, name: str, i: int, spec: LayerSpec) -> float:
    if callable(latency):
        return float(latency(name, spec))
    if name not in latency:
        raise ValueError(f"the latency table has no entry for layer {name!r}")
    row = latency[name]
    if i >= len(row):
        raise ValueError(f"the latency table row of {name!r} has {len(row)} entries, "
                         f"fewer than its candidates")
    return float(row[i])


def _scores(space: CandidateSpace, sensitivity: Sensitivity | Mapping[str, Sequence[float]],
            metric: str | None) -> tuple[np.ndarray, str]:
    if isinstance(sensitivity, Sensitivity):
        metric = metric or sensitivity.metrics[0]
        values = sensitivity.get(metric)
    else:
        values, metric = sensitivity, metric or "scores"
    out = []
    for n in space:
        if n not in values or len(values[n]) != len(space[n]):
            raise ValueError(f"sensitivity {metric!r}: layer {n!r} needs {len(space[n])} values")
        out.extend(float(v) for v in values[n])
    arr = np.asarray(out)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"sensitivity {metric!r} has NaN or infinite values")
    return arr, metric


def _solve(c: np.ndarray, prob: _Problem, limits: list[tuple[str, float]], time_limit: float):
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_vars = len(c)
    rows = np.zeros((len(prob.names), n_vars))
    for r, (start, width) in enumerate(zip(prob.offsets, prob.widths)):
        rows[r, start:start + width] = 1.0
    cons = [LinearConstraint(rows, 1.0, 1.0)]
    for kind, limit in limits:
        scale = max(float(np.abs(prob.cost[kind]).max()), 1e-12)  # keep HiGHS well scaled
        cons.append(LinearConstraint(prob.cost[kind][None, :] / scale, -np.inf,
                                     (limit - prob.const[kind]) / scale + 1e-9))
    return milp(c, integrality=np.ones(n_vars), bounds=Bounds(0, 1), constraints=cons,
                options={"time_limit": time_limit, "mip_rel_gap": 1e-9})


def _minimum(prob: _Problem, kind: str, others: list[tuple[str, float]], time_limit: float
             ) -> float:
    """Smallest reachable total of ``kind`` (subject to ``others``; inf if none)."""
    if not others:
        total = prob.const[kind]
        for start, width in zip(prob.offsets, prob.widths):
            total += float(prob.cost[kind][start:start + width].min())
        return total
    res = _solve(prob.cost[kind], prob, others, time_limit)
    return float("inf") if res.x is None else prob.const[kind] + float(prob.cost[kind] @ res.x)


def allocate(space: CandidateSpace, sensitivity: Sensitivity | Mapping[str, Sequence[float]],
             budget: Budget, *, metric: str | None = None, base: Policy | None = None,
             latency: LatencyLookup | None = None, latency_offset: float = 0.0,
             time_limit: float = 60.0) -> Allocation:
    """Choose one candidate per layer minimising total sensitivity under the budgets.

    Args:
        space: layers and their candidates.
        sensitivity: a :class:`Sensitivity` (use ``metric`` to pick the score; default
            its first) or a plain ``layer -> [score per candidate]`` mapping.
        budget: the limits (size bytes / BitOPs / average weight bits / latency).
        base: specs of the layers the space does not decide (default float); they
            count as constants in every budget. Its model-wide choices (rounding, bias
            correction, calibration size) carry over to the allocated Policy.
        latency: per-layer per-candidate latency, ``layer -> [value per candidate]``
            or ``f(layer, spec) -> value``; needed for ``budget.latency``.
        latency_offset: latency of everything outside the decided layers.
        time_limit: solver limit in seconds.

    Returns:
        :class:`Allocation` (``.policy`` is the allocated Policy).

    Raises:
        InfeasibleBudgetError: no assignment meets the budgets; ``.minimum`` is the
            smallest reachable value of the offending budget.
        ValueError: no budget given, a latency budget without a latency table, or
            scores that do not match the space.
    """
    limits = budget.items()
    if not limits:
        raise ValueError("allocate() needs at least one budget (size_bytes, bitops, "
                         "avg_weight_bits or latency)")
    if budget.latency is not None and latency is None:
        raise ValueError("a latency budget needs a latency table (layer -> value per candidate)")
    base = Policy({}) if base is None else base
    base.check_layers(space.table.names)
    t0 = time.perf_counter()
    scores, metric = _scores(space, sensitivity, metric)
    prob = _build(space, base, latency, latency_offset)
    for kind, limit in limits:  # each budget alone: cheap exact check, clear message
        lowest = _minimum(prob, kind, [], time_limit)
        if lowest > limit * (1 + 1e-12):
            raise InfeasibleBudgetError(kind, limit, lowest)
    scale = max(float(np.abs(scores).max()), 1e-30)
    res = _solve(scores / scale, prob, limits, time_limit)
    if res.x is None:
        for kind, limit in limits:  # jointly infeasible: name the budget that breaks
            others = [(k, v) for k, v in limits if k != kind]
            lowest = _minimum(prob, kind, others, time_limit)
            if lowest > limit * (1 + 1e-12):
                raise InfeasibleBudgetError(kind, limit, lowest, " under the other budgets")
        raise RuntimeError(f"the integer program failed: {res.message}")
    x = np.round(res.x).astype(int)
    choices = {n: int(np.argmax(x[start:start + width]))
               for n, start, width in zip(prob.names, prob.offsets, prob.widths)}
    chosen = {n: space[n][i] for n, i in choices.items()}
    specs = {n: chosen[n] if n in chosen else base[n] for n in space.table.names
             if n in chosen or n in base}
    totals = {k: prob.const[k] + float(prob.cost[k] @ x) for k in KINDS}
    return Allocation(
        policy=Policy(specs, **base.options()), choices=choices, objective=float(scores @ x),
        size_bytes=int(round(totals["size_bytes"])), bitops=int(round(totals["bitops"])),
        avg_weight_bits=totals["avg_weight_bits"],
        latency=totals["latency"] if latency is not None else None, metric=metric,
        budget=budget, seconds=time.perf_counter() - t0, costs=totals)


def size_budget(space: CandidateSpace, avg_bits: float, base: Policy | None = None) -> int:
    """Size in bytes of the uniform policy at ``avg_bits`` weight bits.

    Every decided layer is costed with its first candidate's spec at ``avg_bits``
    (packed ``ceil(n·avg_bits/8)`` bytes + that spec's quantizer overhead + bias);
    fixed layers with ``base``. For an integer ``avg_bits`` this is exactly
    ``estimate(table, uniform policy).size_bytes``; fractional values interpolate
    the packed weight bytes.
    """
    if avg_bits <= 0 or avg_bits > FLOAT_BITS:
        raise ValueError(f"avg_bits must be in (0, 32], got {avg_bits}")
    base = Policy({}) if base is None else base
    table = space.table
    in_layers = sum(i.weight_params + i.bias_params for i in table)
    total = 4 * (table.total_params - in_layers)
    for info in table:
        if info.name not in space:
            total += layer_cost(info, base.get(info.name)).total_bytes
            continue
        first = space[info.name][0]
        if first.weight is None:
            total += layer_cost(info, first).total_bytes
            continue
        bits_int = max(1, int(round(avg_bits)))
        try:
            spec = LayerSpec(first.weight.replace(bits=bits_int), first.act, first.sparsity)
        except ValueError:
            spec = first
        c = layer_cost(info, spec)
        total += c.total_bytes - c.weight_bytes + weight_bytes(info.weight_params, avg_bits,
                                                               spec.sparsity)
    return int(total)
