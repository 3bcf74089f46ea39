"""The uniform policy a searched one has to beat: the dearest uniform candidate in the budget.

A mixed-precision search earns its cost only if its policy beats the best *uniform* policy at
the same budget; on ResNet-20 under a BitOPs budget it did not (docs/search.md, "Which
budget leaves room to mix"). :func:`uniform_within_budget` finds that uniform policy among
the supernet's own candidates: every searched layer at the same (weight candidate,
activation candidate) pair, the fixed layers (first/last) as in the search. Among the pairs
that meet every limit of the budget (and the activation-memory limit), it takes the one that
uses the most of the budget (largest sum over the limits of cost / limit); ties go to more
activation bits, then more weight bits. ``search(..., config=SearchConfig(uniform_baseline=True))``
fine-tunes it with the same QAT recipe, from the same post-search weights, and reports both.
"""

from __future__ import annotations

from typing import Any

from bitsmith.cost import estimate
from bitsmith.cost.budget import (
    Budget,
    budget_values,
    latency_function,
    latency_total,
    within_budget,
)
from bitsmith.policy import Policy
from bitsmith.search.supernet import Supernet, layer_spec_table


def uniform_within_budget(net: Supernet, budget: Budget, latency: Any = None,
                          act_budget_bytes: float | None = None) -> Policy | None:
    """The dearest uniform Policy of ``net``'s candidates that meets ``budget``; None if none.

    Args:
        net: the supernet (its candidates, fixed layers and layer table).
        budget: the limits (bytes, BitOPs per example, average bits, latency in the LUT's unit).
        latency: the latency LUT (``LatencyTable`` or ``f(layer, spec)``) of a latency budget.
        act_budget_bytes: peak input bytes per example any searched layer may have.
    """
    lat = latency_function(latency)
    best: tuple[tuple[float, int, int], Policy] | None = None
    for k, w_spec in enumerate(net.weight_specs):
        for j, a_spec in enumerate(net.act_specs):
            if act_budget_bytes is not None and any(
                    float(net.act_bytes[i][j]) > act_budget_bytes
                    for i in range(len(net.names))):
                continue
            policy = Policy(layer_spec_table(net, {n: (k, j) for n in net.names}))
            cost = estimate(net.table, policy)
            lat_total = latency_total(policy, lat)
            if not within_budget(cost, budget, lat_total):
                continue
            used = budget_values(cost, lat_total)
            rank = (sum(float(used[kind] or 0.0) / limit for kind, limit in budget.items()),
                    a_spec.bits, w_spec.bits)
            if best is None or rank > best[0]:
                best = (rank, policy)
    return None if best is None else best[1]


__all__ = ["uniform_within_budget"]
