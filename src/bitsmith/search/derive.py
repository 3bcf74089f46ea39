"""Derivation of a discrete Policy that meets the budget exactly (with a repair step).

The search ends with per-layer scores over every (weight candidate, activation candidate)
pair: ``-log p_k - log q_j`` for QSS/SSPS (probabilities of the learned distributions),
the squared distance to the learned continuous bit widths for QPL. The derived policy is::

    argmin  Σ_l score_l(k_l, j_l)   subject to   cost_k(policy) <= B_k   for every budget k

solved exactly as a 0-1 integer program by :func:`bitsmith.allocation.ilp.allocate`
(HiGHS). When the arg-max policy already meets the budget it is the optimum (every score
is minimal), so the integer program *is* the repair step: it changes only as few / as
cheap choices as needed when rounding the relaxed solution overshoots. A second program
(``match_expected``) adds the lower bound ``cost_k >= (1 - slack) · min(E_k, B_k)``, ``E_k``
the relaxation's expected cost, so that an undecided relaxation does not round to the
cheapest candidates and leave budget unused; it is used whenever it is feasible. For a
method with a two-sided constraint (SSPS by default: its relaxation is *held at* the budget)
the lower bound is ``(1 - slack) · B_k`` itself, falling back to ``min(E_k, B_k)`` when the
fixed layers make that infeasible: a single-path relaxation whose probabilities are split
between a cheap and a dear candidate can sit at the budget in expectation while its
arg-max is far below it. Layers that SSPS
fixed keep their choice (if that is infeasible they are released, with a warning).
An activation-memory budget removes the candidates whose input bytes exceed it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.ilp import Allocation, allocate
from bitsmith.cost import CostReport, estimate, layer_cost
from bitsmith.cost.budget import (
    InfeasibleBudgetError,
    latency_function,
    latency_total,
    within_budget,
)
from bitsmith.policy import Policy
from bitsmith.search.methods import SSPS, SearchMethod
from bitsmith.search.supernet import spec_label


@dataclass
class Derivation:
    """The derived policy, its cost and the per-layer table.

    Attributes:
        policy: the discrete Policy (fixed layers included).
        cost: :func:`bitsmith.cost.estimate` of ``policy``.
        allocation: the integer program's answer.
        argmax_policy: the arg-max policy before repair, and ``repaired``: whether the two differ.
        rows: per searched layer ``{"layer", "weight", "act_bits", "w_prob", "a_prob",
            "fixed_step", "derived"}``.
    """

    policy: Policy
    cost: CostReport
    allocation: Allocation
    argmax_policy: Policy
    repaired: bool
    rows: list[dict[str, Any]] = field(default_factory=list)


def derive_policy(method: SearchMethod, latency: Any = None, time_limit: float = 30.0,
                  match_expected: bool = True, slack: float = 0.02) -> Derivation:
    """Discrete Policy from a trained search ``method`` meeting its budget exactly.

    Args:
        method: a trained :class:`~bitsmith.search.methods.SearchMethod` (with
            ``two_sided=True`` the lower bound below is the budget itself).
        latency: the latency LUT (``LatencyTable`` or ``f(layer, spec)``), needed for a
            latency budget.
        time_limit: solver time limit in seconds.
        match_expected: also require each budgeted cost to reach at least
            ``(1 - slack) · min(E_k, B_k)``, ``E_k`` the search's expected cost (the
            relaxation's resource use), when some policy can; otherwise (or if that is
            infeasible) only the upper bounds apply. Without it an undecided relaxation
            (flat probabilities) rounds to the cheapest candidates and leaves budget unused.
        slack: relative tolerance of that lower bound.

    Raises:
        InfeasibleBudgetError: no policy meets the budget (names the minimum).
    """
    net = method.net
    scores = method.score()
    kw, ka = len(net.weight_specs), len(net.act_specs)
    fixed = method.fixed if isinstance(method, SSPS) else {}
    lat = latency_function(latency)

    def solve(use_fixed: bool) -> tuple[Allocation, CandidateSpace, dict[str, list[float]]]:
        choices, sc = {}, {}
        for i, name in enumerate(net.names):
            pairs = [(k, j) for k in range(kw) for j in range(ka)]
            if use_fixed and i in fixed:
                pairs = [fixed[i]]
            if method.act_budget is not None:
                pairs = [(k, j) for k, j in pairs
                         if float(net.act_bytes[i][j]) <= method.act_budget]
                if not pairs:
                    raise InfeasibleBudgetError(
                        "act_bytes", method.act_budget,
                        min(float(net.act_bytes[i].min()), float("inf")),
                        f" for layer {name}")
            choices[name] = [net.spec_of(k, j) for k, j in pairs]
            sc[name] = [scores[name][k * ka + j] for k, j in pairs]
        space = CandidateSpace(net.table, choices)
        base = Policy(dict(net.fixed))
        offset = net.const.get("latency", 0.0)
        return allocate(space, sc, method.budget, base=base, latency=lat,
                        latency_offset=offset, time_limit=time_limit,
                        metric=method.name), space, sc

    try:
        alloc, space, sc = solve(True)
    except InfeasibleBudgetError:
        if not fixed:
            raise
        warnings.warn("the layers fixed during the search make the budget infeasible; "
                      "deriving with them released", RuntimeWarning, stacklevel=2)
        alloc, space, sc = solve(False)
    policy = alloc.policy
    if match_expected:
        targets = ("budget", "expected") if getattr(method, "two_sided", False) \
            else ("expected",)
        for target in targets:
            matched = _match_expected(method, space, sc, lat, slack, time_limit, target)
            if matched is not None and within_budget(
                    estimate(net.table, matched), method.budget,
                    latency_total(matched, lat)):
                policy = matched
                break
    argmax = Policy({**dict(net.fixed), **{n: net.spec_of(*c)
                                          for n, c in method.choices().items()}})
    rows = method.layer_rows()
    for r in rows:
        spec = policy[r["layer"]]
        r["derived"] = spec_label(spec)
    return Derivation(policy=policy, cost=estimate(net.table, policy), allocation=alloc,
                      argmax_policy=argmax, repaired=argmax != policy, rows=rows)


def _pair_costs(net: Any, space: CandidateSpace, kind: str, lat: Any) -> np.ndarray:
    n_total = max(sum(i.weight_params for i in net.table), 1)
    out = []
    for name in space:
        info = net.table[name]
        for spec in space[name]:
            if kind == "latency":
                out.append(float(lat(name, spec)))
                continue
            c = layer_cost(info, spec)
            out.append({"size_bytes": c.total_bytes, "bitops": c.bitops,
                        "avg_weight_bits": c.weight_bits * info.weight_params / n_total}[kind])
    return np.asarray(out, dtype=np.float64)


def _match_expected(method: SearchMethod, space: CandidateSpace, sc: dict[str, list[float]],
                    lat: Any, slack: float, time_limit: float, target: str = "expected"
                    ) -> Policy | None:
    """Most probable policy with ``(1 - slack)·T_k <= cost_k <= B_k``; None if none.

    ``T_k = min(E_k, B_k)`` for ``target="expected"``, ``B_k`` for ``target="budget"``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    net = method.net
    pw, pa = method.probs()
    names = list(space)
    widths = [len(space[n]) for n in names]
    n_vars = sum(widths)
    c = np.asarray([v for n in names for v in sc[n]], dtype=np.float64)
    rows = np.zeros((len(names), n_vars))
    start = 0
    for r, w in enumerate(widths):
        rows[r, start:start + w] = 1.0
        start += w
    cons = [LinearConstraint(rows, 1.0, 1.0)]
    for kind, limit in method.budget.items():
        if kind == "latency" and lat is None:
            return None
        cost = _pair_costs(net, space, kind, lat)
        expected = float(net.expected_cost(kind, [p.detach() for p in pw],
                                           [p.detach() for p in pa]))
        goal = limit if target == "budget" else min(expected, limit)
        lower = (1.0 - slack) * goal - net.const[kind]
        upper = limit - net.const[kind]
        scale = max(float(np.abs(cost).max()), 1e-12)
        cons.append(LinearConstraint(cost[None, :] / scale, lower / scale,
                                     upper / scale + 1e-9))
    scale_c = max(float(np.abs(c).max()), 1e-30)
    res = milp(c / scale_c, integrality=np.ones(n_vars), bounds=Bounds(0, 1), constraints=cons,
               options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    specs = dict(net.fixed)
    start = 0
    for name, w in zip(names, widths):
        specs[name] = space[name][int(np.argmax(x[start:start + w]))]
        start += w
    return Policy({n: specs[n] for n in net.table.names if n in specs})
