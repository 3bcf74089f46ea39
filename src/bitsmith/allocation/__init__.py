"""Budgeted per-layer allocation, shared by every producer that picks one choice per layer.

* :class:`CandidateSpace` / :func:`bit_candidates` - the (layer, candidate LayerSpec) choices;
* :class:`Sensitivity` - named "bigger is worse" scores per (layer, candidate), their
  JSON form and :func:`rank_correlation` between two scores;
* :func:`allocate` - the 0-1 integer program under a :class:`bitsmith.cost.Budget`
  (size / BitOPs / average bits / latency), :func:`size_budget`.

The estimators that fill a :class:`Sensitivity` live in :mod:`bitsmith.sensitivity`.
"""

from bitsmith.allocation.candidates import CandidateSpace, bit_candidates, choice_label
from bitsmith.allocation.ilp import Allocation, LatencyLookup, allocate, size_budget
from bitsmith.allocation.scores import Sensitivity, per_choice_correlation, rank_correlation

__all__ = [
    "Allocation", "CandidateSpace", "LatencyLookup", "Sensitivity", "allocate",
    "bit_candidates", "choice_label", "per_choice_correlation", "rank_correlation",
    "size_budget",
]
