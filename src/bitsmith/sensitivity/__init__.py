"""Per-layer sensitivity estimators: each fills a :class:`bitsmith.allocation.Sensitivity`.

* :func:`measure_sensitivity` - quantize one layer at a time, measure KL / loss / accuracy;
* :func:`estimate_hessian` - HAWQ-V2 ``Tr(H)/n · ||Q(W) - W||^2`` (Hutchinson);
* :func:`estimate_fisher` - empirical-Fisher ``fisher`` and ``fisher_diag``;
* :func:`weight_perturbations` / :func:`quantization_error` - the weight-only damage terms.

Used by ``bitsmith analyze`` (:mod:`bitsmith.analyze`), the search's warm start and
:func:`bitsmith.autoquantize`. See docs/analyze_and_report.md.
"""

from bitsmith.sensitivity.fisher import estimate_fisher, per_example_grads
from bitsmith.sensitivity.hessian import estimate_hessian, hutchinson_traces
from bitsmith.sensitivity.measured import measure_sensitivity, output_damage
from bitsmith.sensitivity.perturbation import quantization_error, weight_perturbations

__all__ = [
    "estimate_fisher", "estimate_hessian", "hutchinson_traces", "measure_sensitivity",
    "output_damage", "per_example_grads", "quantization_error", "weight_perturbations",
]
