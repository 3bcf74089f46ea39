"""The ``analyze`` producer: sensitivities -> ILP allocations at budgets -> a run directory.

:func:`run_analysis` (``bitsmith analyze``) builds on the shared primitives
:mod:`bitsmith.sensitivity` (estimators) and :mod:`bitsmith.allocation` (candidate space,
scores, integer program). See docs/analyze_and_report.md.
"""

from bitsmith.analyze.pipeline import AnalysisResult, run_analysis

__all__ = ["AnalysisResult", "run_analysis"]
