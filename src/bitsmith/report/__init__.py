"""Reports of a run directory: layer table, sensitivity, Pareto front, search, export.

:func:`write_report` reads a run directory (:func:`bitsmith.rundir.load_run`) and writes
``report.html`` (self-contained), ``report.md`` and ``report.json``. The report only
reads: producers write run directories through :mod:`bitsmith.rundir`
(docs/analyze_and_report.md describes the format).
"""

from bitsmith.report.build import write_report

__all__ = ["write_report"]
