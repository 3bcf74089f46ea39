"""Reports of a run directory: layer table, sensitivity, Pareto front, search, export.

* :class:`RunWriter` - what producers (demo, tuner, search, export) call to write a run;
* :func:`load_run` - read and validate one (:class:`RunDirError` names what is missing);
* :func:`write_report` - ``report.html`` (self-contained), ``report.md``, ``report.json``.

The format is described in :mod:`bitsmith.report.rundir` and docs/analyze_and_report.md.
"""

from bitsmith.report.build import write_report
from bitsmith.report.pareto import pareto_front
from bitsmith.report.rundir import (
    REQUIRED,
    RunData,
    RunDirError,
    RunWriter,
    layer_table_from_rows,
    load_run,
)

__all__ = ["REQUIRED", "RunData", "RunDirError", "RunWriter", "layer_table_from_rows",
           "load_run", "pareto_front", "write_report"]
