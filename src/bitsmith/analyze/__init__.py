"""Per-layer sensitivity analysis and budgeted bit allocation (see docs/analyze_and_report.md).

* :func:`bit_candidates` / :class:`CandidateSpace` - the (layer, candidate) choices;
* :func:`measure_sensitivity` - quantize one layer at a time, measure KL / loss / accuracy;
* :func:`estimate_hessian` - HAWQ-V2 ``Tr(H)/n · ||Q(W) - W||^2`` (Hutchinson);
* :func:`estimate_fisher` - empirical-Fisher ``fisher`` and ``fisher_diag``;
* :func:`rank_correlation` - Spearman rho between two scores;
* :func:`allocate` - the 0-1 integer program under size / BitOPs / bits / latency budgets.
"""

from bitsmith.analyze.allocate import (
    Allocation,
    Budget,
    InfeasibleBudgetError,
    LatencyTable,
    allocate,
    size_budget,
)
from bitsmith.analyze.candidates import CandidateSpace, bit_candidates, choice_label
from bitsmith.analyze.fisher import estimate_fisher, per_example_grads
from bitsmith.analyze.hessian import estimate_hessian, hutchinson_traces
from bitsmith.analyze.measured import measure_sensitivity, output_damage
from bitsmith.analyze.perturbation import quantization_error, weight_perturbations
from bitsmith.analyze.sensitivity import (
    Sensitivity,
    per_choice_correlation,
    rank_correlation,
)

__all__ = [
    "Allocation", "Budget", "CandidateSpace", "InfeasibleBudgetError", "LatencyTable",
    "Sensitivity", "allocate", "bit_candidates", "choice_label", "estimate_fisher",
    "estimate_hessian", "hutchinson_traces", "measure_sensitivity", "output_damage",
    "per_choice_correlation", "per_example_grads", "quantization_error", "rank_correlation",
    "size_budget", "weight_perturbations",
]
