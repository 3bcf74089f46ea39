"""Repair toward the budget: a configuration over a size / BitOPs budget becomes the nearest
configuration within it, so a budgeted study spends its trials on feasible candidates.

A ``max_accuracy`` study with a cost budget (``--budget``) rejects over-budget
configurations without evaluating them; at a tight budget (3-bit size on a ResNet) almost
every configuration a strategy proposes is over it. :class:`BudgetRepair` keeps the
proposal's global knobs (scheme, clipping, calibration, ...) and moves its per-layer bit
widths the *fewest steps* needed to fit, solving the same 0-1 integer program as the
sensitivity-based allocator (:func:`bitsmith.allocation.ilp.allocate`):

    minimise    Σ_l Σ_c d[l, c] · x[l, c]      d = bit-width steps from the proposal,
                                               plus a tie-break toward the dearer choice
    subject to  one choice per layer,  Σ cost[l, c] · x[l, c] <= budget

with the layer costs of :func:`bitsmith.cost.layer_cost` (what the evaluator's cost model
charges). Parameters fixed by an enqueued trial are kept. When the global knobs alone make
the budget unreachable (e.g. layers forced to float), the proposal is left as it is and the
objective rejects it as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.ilp import allocate
from bitsmith.cost.budget import Budget, InfeasibleBudgetError
from bitsmith.policy import FLOAT, LayerSpec, Policy
from bitsmith.tune.objectives import Objective
from bitsmith.tune.space import A_PREFIX, FLOAT_CHOICE, W_PREFIX, Choices

BUDGET_KINDS = {"size": "size_bytes", "bitops": "bitops"}
TIE_BREAK = 1e-3            # weight of "prefer the dearer choice" against one bit-width step


def _bits(choice: Any) -> float:
    return 32.0 if choice == FLOAT_CHOICE else float(choice)


class BudgetRepair:
    """``repair(config, fixed)``: the nearest configuration within the objective's budget.

    Args:
        evaluator: the study's evaluator; needs ``table`` (its LayerTable), ``space``,
            ``layer_names``, ``policy(config)`` and ``cost(config)``.
        objective: a ``max_accuracy`` objective with a ``size`` or ``bitops`` budget.

    Use :meth:`for_study` to get ``None`` when the study has nothing to repair.
    """

    def __init__(self, evaluator: Any, objective: Objective) -> None:
        self.evaluator = evaluator
        self.objective = objective
        self.kind = BUDGET_KINDS[objective.metric]
        self.budget = objective.max_cost
        self.table = evaluator.table
        self.names = list(evaluator.layer_names)
        self.dims = evaluator.space.dimensions(self.names)
        self.layer_dims = {n: [d for d in (W_PREFIX + n, A_PREFIX + n) if d in self.dims]
                           for n in self.names}
        self._specs: dict[str, dict[str, list[tuple[tuple, LayerSpec]]]] = {}
        self.repaired = 0

    @classmethod
    def for_study(cls, evaluator: Any, objective: Objective) -> BudgetRepair | None:
        """A repair for a budgeted ``max_accuracy`` study over per-layer bit widths, else
        ``None`` (no budget, a latency budget, or nothing per layer to move)."""
        if objective.kind != "max_accuracy" or objective.metric not in BUDGET_KINDS:
            return None
        if getattr(evaluator, "table", None) is None:
            return None
        names = list(evaluator.layer_names)
        dims = evaluator.space.dimensions(names)
        if not any(W_PREFIX + n in dims or A_PREFIX + n in dims for n in names):
            return None
        return cls(evaluator, objective)

    def cost(self, config: Choices) -> float:
        report = self.evaluator.cost(config)
        return float(report.size_bytes if self.kind == "size_bytes" else report.bitops)

    def __call__(self, config: Choices, fixed: Mapping[str, Any] | None = None
                 ) -> Choices | None:
        """``config`` if within budget; else its nearest repair; ``None`` if none exists."""
        if self.cost(config) <= self.budget:
            return config
        fixed = dict(fixed or {})
        options = self._options(config)
        own = self.evaluator.policy(config)
        choices: dict[str, list[tuple[float, tuple, LayerSpec]]] = {}
        base: dict[str, LayerSpec] = {}
        for name in self.names:
            dims = self.layer_dims[name]
            best: dict[LayerSpec, tuple[float, tuple]] = {}
            for combo, spec in options[name]:
                if any(d in fixed and fixed[d] != v for d, v in zip(dims, combo)):
                    continue
                score = self._score(config, dims, combo)
                if spec not in best or score < best[spec][0]:
                    best[spec] = (score, combo)
            if len(best) <= 1:                      # nothing to choose for this layer
                if name in own:
                    base[name] = own[name]
                continue
            choices[name] = [(score, combo, spec) for spec, (score, combo) in best.items()]
        if not choices:
            return None
        space = CandidateSpace(self.table, {n: [c[2] for c in opts]
                                            for n, opts in choices.items()})
        scores = {n: [c[0] for c in opts] for n, opts in choices.items()}
        try:
            alloc = allocate(space, scores, Budget(**{self.kind: self.budget}),
                             base=Policy(base), time_limit=10.0)
        except InfeasibleBudgetError:
            return None
        out = dict(config)
        for name, index in alloc.choices.items():
            out.update(zip(self.layer_dims[name], choices[name][index][1]))
        if self.cost(out) > self.budget:     # the cost models disagree: do not pretend
            return None
        self.repaired += 1
        return out

    # -------------------------------------------------------------- internals
    def _options(self, config: Choices) -> dict[str, list[tuple[tuple, LayerSpec]]]:
        """Per layer: ``(choice of each of its dims, LayerSpec)`` for every combination of
        its per-layer dims under ``config``'s global knobs (cached per global knobs)."""
        key = repr(sorted((d, v) for d, v in config.items() if ":" not in d))
        if key not in self._specs:
            combos = {n: list(itertools.product(*(self.dims[d] for d in dims)))
                      for n, dims in self.layer_dims.items()}
            per_layer: dict[str, list[tuple[tuple, LayerSpec]]] = {n: [] for n in self.names}
            for i in range(max(len(c) for c in combos.values())):
                probe = dict(config)   # one policy per column: every layer at its i-th combo
                for n, dims in self.layer_dims.items():
                    probe.update(zip(dims, combos[n][min(i, len(combos[n]) - 1)]))
                policy: Policy = self.evaluator.policy(probe)
                for n in self.names:
                    if i < len(combos[n]):
                        per_layer[n].append((combos[n][i], policy.get(n, FLOAT)))
            self._specs[key] = per_layer
        return self._specs[key]

    def _score(self, config: Choices, dims: Sequence[str], combo: tuple) -> float:
        """Bit-width steps of ``combo`` from the proposal, plus a tie-break toward the
        combination that keeps more bits (the dearer one)."""
        steps = sum(abs(self._rank(d, v) - self._rank(d, config[d])) for d, v in zip(dims, combo))
        bits = sum(_bits(v) for v in combo)
        return steps + TIE_BREAK * (1.0 - bits / (32.0 * max(len(dims), 1)))

    def _rank(self, dim: str, choice: Any) -> int:
        return sorted(self.dims[dim], key=_bits).index(choice)
