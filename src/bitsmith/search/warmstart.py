"""ILP warm start of the training-time search: sensitivity + integer program -> Policy.

:func:`ilp_warm_start` estimates a per-candidate sensitivity of every searched layer over
the supernet's candidates and allocates them under the search budget with the same 0-1
integer program as ``bitsmith analyze`` (:func:`bitsmith.allocation.ilp.allocate`).
Metrics: ``"fisher"`` (empirical Fisher, :func:`bitsmith.sensitivity.fisher.estimate_fisher`),
``"hessian"`` (HAWQ-V2 Hutchinson traces, :func:`bitsmith.sensitivity.hessian.estimate_hessian`)
and ``"measured_kl"`` (each candidate quantized alone, KL divergence of the outputs,
:func:`bitsmith.sensitivity.measured.measure_sensitivity`). Fisher and Hessian score the
*weight* perturbation only (with several activation candidates the program takes the
cheapest activation bits that fit); the measured score quantizes the candidate's weights and
activations, needs calibration batches and costs one evaluation per candidate. The returned
Policy is what ``SearchConfig(warm_start=...)`` / the method's ``init_policy`` start the
architecture parameters at.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.ilp import Allocation, allocate
from bitsmith.cost.budget import Budget, latency_function
from bitsmith.policy import Policy
from bitsmith.search.supernet import Supernet

WARM_METRICS = ("fisher", "hessian", "measured_kl")


def ilp_warm_start(model: nn.Module, net: Supernet, budget: Budget, data: Iterable, *,
                   metric: str = "fisher", calibration: Iterable | None = None,
                   act_budget_bytes: float | None = None,
                   latency: Any = None, max_examples: int = 512, seed: int = 0,
                   time_limit: float = 30.0) -> Allocation:
    """Allocate the supernet's candidates by sensitivity under ``budget`` (the warm start).

    Args:
        model: the float model the supernet was built from (not modified).
        net: the supernet (its candidates, fixed layers and cost constants are used).
        budget: the search budget.
        data: labelled batches for the sensitivity (the held-out split is a good choice).
        metric: ``"fisher"``, ``"hessian"`` or ``"measured_kl"``.
        calibration: batches for the activation ranges (``"measured_kl"`` only; default
            ``data``).
        act_budget_bytes: drop activation candidates whose input bytes exceed it.
        latency: latency LUT (``LatencyTable`` or ``f(layer, spec)``) for a latency budget.
        max_examples: examples the estimator uses.

    Returns:
        the :class:`~bitsmith.allocation.ilp.Allocation`; ``.policy`` is the warm start.

    Raises:
        ValueError: unknown ``metric``.
        InfeasibleBudgetError: no policy meets the budget.
    """
    if metric not in WARM_METRICS:
        raise ValueError(f"unknown warm-start metric {metric!r}; use one of {WARM_METRICS}")
    kw, ka = len(net.weight_specs), len(net.act_specs)
    choices = {}
    for i, name in enumerate(net.names):
        pairs = [(k, j) for k in range(kw) for j in range(ka)
                 if act_budget_bytes is None or float(net.act_bytes[i][j]) <= act_budget_bytes]
        choices[name] = [net.spec_of(k, j) for k, j in pairs] or \
            [net.spec_of(k, int(net.act_bytes[i].argmin())) for k in range(kw)]
    space = CandidateSpace(net.table, choices)
    if metric == "fisher":
        from bitsmith.sensitivity.fisher import estimate_fisher

        sens = estimate_fisher(model, space, data, max_examples=max_examples)
    elif metric == "hessian":
        from bitsmith.sensitivity.hessian import estimate_hessian

        sens = estimate_hessian(model, space, data, max_examples=max_examples, seed=seed)
    else:
        from bitsmith.sensitivity.measured import measure_sensitivity

        sens = measure_sensitivity(model, space, data, max_examples=max_examples,
                                   calibration=data if calibration is None else calibration,
                                   base=Policy(dict(net.fixed)))
    return allocate(space, sens, budget, metric=metric, base=Policy(dict(net.fixed)),
                    latency=latency_function(latency), latency_offset=net.const.get("latency", 0.0),
                    time_limit=time_limit)


__all__ = ["WARM_METRICS", "ilp_warm_start"]
