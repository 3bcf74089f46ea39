"""The accuracy-vs-size Pareto front of a set of evaluated policies."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(sizes: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (smaller cost and higher accuracy are better).

    The one Pareto front of bitsmith (the tuner's study, the report, the chosen policy).

    A point is dominated when another is no larger and no less accurate, and strictly
    better in one of the two. Exact duplicates keep the first. Returned in increasing size.

    Args:
        sizes: any cost (bytes, BitOPs, ms), shape ``(n,)``; accuracies: percent, shape
            ``(n,)`` (or any higher-is-better metric).
    """
    if len(sizes) != len(accuracies):
        raise ValueError(f"{len(sizes)} sizes but {len(accuracies)} accuracies")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -accuracies[i], i))
    front, best = [], float("-inf")
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front


def best_within(costs: Sequence[float], scores: Sequence[float], limit: float) -> int | None:
    """Index of the highest score among the points with ``cost <= limit`` (ties: the lower
    cost, then the first); ``None`` when no point is within. Always a Pareto-front point."""
    inside = [i for i in range(len(costs)) if costs[i] <= limit]
    if not inside:
        return None
    return min(inside, key=lambda i: (-scores[i], costs[i], i))


def cheapest_within(costs: Sequence[float], scores: Sequence[float], floor: float
                    ) -> int | None:
    """Index of the lowest cost among the points with ``score >= floor`` (ties: the higher
    score, then the first); ``None`` when no point qualifies. Always a Pareto-front point."""
    ok = [i for i in range(len(costs)) if scores[i] >= floor]
    if not ok:
        return None
    return min(ok, key=lambda i: (costs[i], -scores[i], i))
