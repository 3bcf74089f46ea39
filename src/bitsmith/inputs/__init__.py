"""Your model, your data, your metric: the resolvers every sub-command and the Python API use.

* :func:`resolve_model` (:mod:`.model`): registered names, ``torchvision:NAME``,
  ``file.py:build`` / ``package.module:build`` with keyword arguments, a checkpoint;
* :func:`resolve_data` (:mod:`.data`): built-ins, image folders, tensors files, factories;
  the split rule; the overlap check; :func:`check_model_input`;
* :func:`evaluate` / :func:`resolve_metric` (:mod:`.metric`): top-1 and user metrics;
* :func:`load_workload` (:mod:`.workload`): all three together, built-in names as shortcuts.

See ``docs/inputs.md``. Every error is an :class:`~bitsmith.errors.InputError` (exit 2).
"""

from bitsmith.inputs.data import DataSplits, SplitInfo, check_model_input, resolve_data
from bitsmith.inputs.errors import CheckpointError, DataSpecError, MetricError, ModelSpecError
from bitsmith.inputs.metric import Evaluate, Metric, evaluate, resolve_metric
from bitsmith.inputs.model import describe_model, resolve_model
from bitsmith.inputs.workload import WORKLOADS, Workload, load_workload

__all__ = [
    "WORKLOADS", "CheckpointError", "DataSpecError", "DataSplits", "Evaluate", "Metric",
    "MetricError", "ModelSpecError", "SplitInfo", "Workload", "check_model_input",
    "describe_model", "evaluate", "load_workload", "resolve_data", "resolve_metric",
    "resolve_model",
]
