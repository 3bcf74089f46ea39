"""Reports of a run directory: layer table, sensitivity, Pareto front, search, export.

:func:`write_report` reads a run directory (:func:`bitsmith.rundir.load_run`) and writes
``report.html`` (self-contained), ``report.md`` and ``report.json``. The report only
reads: producers write run directories through :mod:`bitsmith.rundir`
(docs/analyze_and_report.md describes the format). ``write_report`` imports its module
(and matplotlib) on first use.
"""

from typing import TYPE_CHECKING

from bitsmith._lazy import lazy_exports

_MODULES = {"bitsmith.report.build": ("write_report",)}
__all__ = ["write_report"]
__getattr__, __dir__ = lazy_exports(
    __name__, {name: module for module, names in _MODULES.items() for name in names})

if TYPE_CHECKING:
    from bitsmith.report.build import write_report
