"""The ``analyze`` producer: sensitivities -> ILP allocations at budgets -> a run directory.

:func:`analyze` (``bitsmith analyze``) builds on the shared primitives
:mod:`bitsmith.sensitivity` (estimators) and :mod:`bitsmith.allocation` (candidate space,
scores, integer program). See docs/analyze_and_report.md.
"""

from bitsmith.analyze.pipeline import AnalysisResult, AnalyzeConfig, analyze

__all__ = ["AnalysisResult", "AnalyzeConfig", "analyze"]
