"""THE budget type of bitsmith: upper limits on size, BitOPs, average bits and latency.

Every producer that works under a budget (the ILP allocator, the training-time search,
DPQ, :func:`bitsmith.autoquantize`) takes a :class:`Budget`; :func:`within_budget` checks
a policy's :class:`~bitsmith.cost.CostReport` against it and :func:`latency_function` is
the one adapter from a latency lookup table (a measured
:class:`bitsmith.export.latency.LatencyTable`, or any ``f(layer, spec) -> latency``) to the
callable the cost side uses.

Units: ``size_bytes`` in bytes as :func:`bitsmith.cost.estimate` counts them (packed
weights + quantizer overhead + float tensors), ``bitops`` per example, ``avg_weight_bits``
the weight-count-weighted mean weight width, ``latency`` in the unit of the caller's table
(ms for bitsmith's tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitsmith.config import Config
from bitsmith.cost.model import CostReport
from bitsmith.errors import InfeasibleError
from bitsmith.policy import LayerSpec, Policy

KINDS = ("size_bytes", "bitops", "avg_weight_bits", "latency")
LatencyFn = Callable[[str, LayerSpec], float]


class InfeasibleBudgetError(InfeasibleError, ValueError):
    """No choice of the candidates meets a budget: the one "infeasible" error of every
    producer (the ILP allocator, the search, the tuner, DPQ); exit code 3.

    Attributes:
        kind: which budget (``"size_bytes"``, ``"bitops"``, ``"avg_weight_bits"``,
            ``"latency"``, ``"act_bytes"``).
        budget: the requested limit.
        minimum: the smallest value of ``kind`` reachable with these candidates (under
            the other budgets, when only their combination is infeasible).
        closest: the producer's closest choice (e.g. the tuner's cheapest configuration),
            or ``None``; ``measurement``: its measured cost, or ``None``.
    """

    def __init__(self, kind: str, budget: float, minimum: float, detail: str = "", *,
                 hint: str = "raise the budget or add cheaper candidates",
                 closest: Any = None, measurement: Any = None) -> None:
        self.kind, self.budget, self.minimum = kind, float(budget), float(minimum)
        self.closest, self.measurement = closest, measurement
        unit = {"size_bytes": " bytes", "bitops": " BitOPs", "avg_weight_bits": " bits",
                "act_bytes": " bytes", "latency": " (table unit)"}.get(kind, "")
        extra = f" ({minimum / 1024:.1f} KiB)" if kind == "size_bytes" else ""
        super().__init__(
            f"infeasible {kind} budget {budget:,.6g}{unit}: the minimum reachable {kind} with "
            f"these candidates{detail} is {minimum:,.6g}{unit}{extra}; {hint}")


@dataclass(frozen=True)
class Budget(Config):
    """Upper limits; ``None`` = unconstrained. At least one must be set to constrain anything.

    Attributes:
        size_bytes: model size in bytes as :func:`bitsmith.cost.estimate` counts it.
        bitops: BitOPs per example.
        avg_weight_bits: weight-count-weighted mean weight bit width.
        latency: in the unit of the caller's latency table.
    """

    size_bytes: float | None = None
    bitops: float | None = None
    avg_weight_bits: float | None = None
    latency: float | None = None

    def items(self) -> list[tuple[str, float]]:
        """``[(kind, limit), ...]`` of the limits that are set, in :data:`KINDS` order."""
        return [(k, float(getattr(self, k))) for k in KINDS if getattr(self, k) is not None]

    def describe(self) -> str:
        """``"size_bytes <= 12,345, bitops <= 1e+09"`` (``"no budget"`` when empty)."""
        return ", ".join(f"{k} <= {v:,.6g}" for k, v in self.items()) or "no budget"


def budget_values(cost: CostReport, latency_total: float | None = None
                  ) -> dict[str, float | None]:
    """The quantity each budget kind limits: bytes, BitOPs per example, average weight
    bits, latency (the LUT's unit; None without one)."""
    return {"size_bytes": cost.size_bytes, "bitops": cost.bitops,
            "avg_weight_bits": cost.avg_weight_bits, "latency": latency_total}


def within_budget(cost: CostReport, budget: Budget, latency_total: float | None = None) -> bool:
    """True when ``cost`` (and ``latency_total``) meet every limit of ``budget``."""
    vals = budget_values(cost, latency_total)
    for kind, limit in budget.items():
        v = vals[kind]
        if v is None or v > limit * (1 + 1e-9):
            return False
    return True


def latency_function(latency: Any) -> LatencyFn | None:
    """The one latency adapter: a lookup table as ``f(layer, spec) -> latency``.

    Accepts ``None`` (stays ``None``), a callable (returned as is) or any object with a
    ``latency(layer, spec)`` method (a measured :class:`bitsmith.export.latency.LatencyTable`).
    """
    if latency is None or callable(latency):
        return latency
    if not callable(getattr(latency, "latency", None)):
        raise TypeError(f"a latency table must be callable or have .latency(layer, spec), "
                        f"got {type(latency).__name__}")
    return lambda name, spec: latency.latency(name, spec)


def latency_total(policy: Policy, lat: LatencyFn | None) -> float | None:
    """Sum of ``lat(layer, spec)`` over ``policy`` (None without a latency function)."""
    if lat is None:
        return None
    return float(sum(lat(n, s) for n, s in policy.items()))
