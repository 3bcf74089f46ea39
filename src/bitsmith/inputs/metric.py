"""The evaluation protocol: :func:`evaluate` and metric specs (higher is always better).

Metric specs (``docs/inputs.md``):

* ``"top1"`` (default), ``"top5"``: accuracy in percent on labelled data;
  ``"neg_loss"``: minus the mean cross-entropy. All three come from the one
  classification loop, :func:`bitsmith.engine.evaluate`.
* ``path/to/file.py:function`` or ``package.module:function``, or a Python callable:
  ``function(model)`` (it brings its own data) or ``function(model, data)`` (it receives
  the validation data: a ``DataLoader``), returning a finite number, higher = better
  (top-1, mAP, negative loss, ...).

:func:`resolve_metric` turns a spec into a :class:`Metric`; ``metric.evaluator(data)``
binds data and gives the producers' ``evaluate: Callable[[nn.Module], float]``. A metric
that raises or returns a non-number raises :class:`MetricError` (an ``InputError``) naming
the metric and the fix.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bitsmith.engine import EvalResult, UnlabelledDataError
from bitsmith.engine import evaluate as classification_scores
from bitsmith.inputs.errors import MetricError
from bitsmith.inputs.specs import call_user, describe_exception, load_callable

BUILTIN_METRICS = ("top1", "top5", "neg_loss")
EVAL_BATCH = 256


def _builtin_score(name: str, result: EvalResult) -> float:
    if name == "top1":
        return result.accuracy
    if name == "neg_loss":
        return -result.loss
    if result.top5 is None:
        raise MetricError("metric 'top5' needs a model that scores at least 5 classes; use top1")
    return result.top5


def as_batches(data: Any, batch_size: int = EVAL_BATCH) -> Any:
    """Batches of ``data``: a loader / iterable as it is; a dataset, a validation split of
    :class:`~bitsmith.inputs.data.DataSplits`, a tensor or an ``(x, y)`` pair in a loader."""
    from bitsmith.data.datasets import InputDataset, make_loader
    from bitsmith.inputs.data import DataSplits

    if isinstance(data, DataSplits):
        return data.loader("validation", batch_size)
    if isinstance(data, Tensor):
        data = InputDataset(data)
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        data = InputDataset(data[0], data[1])
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data,
                                                                                  "__len__"):
        return make_loader(data, batch_size=batch_size)
    return data


def _takes_data(fn: Callable[..., Any]) -> bool:
    """``fn(model, data)`` when it accepts two positional arguments, else ``fn(model)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def as_score(value: Any, name: str) -> float:
    """``value`` as a finite float (Python / numpy number, one-element tensor).

    Raises:
        MetricError: anything else (names the metric and the type or value returned).
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shown = type(value).__name__ if not isinstance(value, (str, bytes)) else repr(value)[:40]
        raise MetricError(f"metric {name!r} returned {shown}, not a number; return one float "
                          "(higher is better)")
    score = float(value)
    if not math.isfinite(score):
        raise MetricError(f"metric {name!r} returned {score}; return a finite number (a NaN "
                          "usually means empty data or a division by zero)")
    return score


@dataclass(frozen=True)
class Metric:
    """A resolved metric: ``metric(model, data) -> float`` (higher is better).

    Attributes:
        name: ``"top1"``, the ``file.py:function`` spec, or the callable's name.
        needs_labels: built-in metrics need labelled data; user functions do not.
        fn: the user function (``None`` for built-ins).
        path: the user's file (for error messages).
    """

    name: str
    needs_labels: bool
    fn: Callable[..., Any] | None = None
    path: Path | None = None
    takes_data: bool = field(default=True)

    def __call__(self, model: nn.Module, data: Any = None) -> float:
        """Score ``model`` (eval mode and no grad for the call, then restored)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self._score(model, data)
        finally:
            model.train(was_training)

    def _score(self, model: nn.Module, data: Any) -> float:
        if self.fn is None:
            if data is None:
                raise MetricError(f"metric {self.name!r} needs labelled data to evaluate on")
            try:
                result = classification_scores(model, as_batches(data))
            except UnlabelledDataError as err:
                raise MetricError(f"metric {self.name!r}: {err}") from err
            except (RuntimeError, IndexError) as err:
                raise MetricError(f"metric {self.name!r} failed ({describe_exception(err)}); "
                                  "it needs integer class labels and one score per class "
                                  "from the model, else give a metric function") from err
            return _builtin_score(self.name, result)
        args = (model, data) if self.takes_data else (model,)
        value = call_user(self.fn, *args, what=f"metric {self.name!r}", error=MetricError,
                          path=self.path, fix="fix the metric function")
        return as_score(value, self.name)

    def evaluator(self, data: Any = None) -> Evaluate:
        """``evaluate(model) -> float`` on ``data`` (batches built once, reused)."""
        if data is None and (self.fn is None or self.takes_data):
            raise MetricError(f"metric {self.name!r} needs data to evaluate on; give "
                              "validation data")
        return Evaluate(self, None if data is None else as_batches(data))


@dataclass(frozen=True)
class Evaluate:
    """``Callable[[nn.Module], float]``: a :class:`Metric` bound to its data."""

    metric: Metric
    data: Any

    @property
    def name(self) -> str:
        return self.metric.name

    def __call__(self, model: nn.Module) -> float:
        return self.metric(model, self.data)


def resolve_metric(metric: str | Callable[..., Any] | Metric | None = "top1") -> Metric:
    """A :class:`Metric` from a spec (see the module docstring); ``None`` means top-1.

    Raises:
        MetricError: unknown name, or a function that cannot be loaded.
    """
    if metric is None:
        metric = "top1"
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        name = metric.strip()
        if name in BUILTIN_METRICS:
            return Metric(name, needs_labels=True)
        if ":" not in name:
            raise MetricError(f"unknown metric {name!r}; use one of {BUILTIN_METRICS}, "
                              "path/to/file.py:function or package.module:function")
        fn, path = load_callable(name, what=f"metric {name!r}", error=MetricError)
        return Metric(name, needs_labels=False, fn=fn, path=path, takes_data=_takes_data(fn))
    if callable(metric):
        name = getattr(metric, "__qualname__", None) or type(metric).__name__
        return Metric(name, needs_labels=False, fn=metric, takes_data=_takes_data(metric))
    raise MetricError(f"metric: expected a name, a 'file.py:function' reference or a "
                      f"callable, got {type(metric).__name__}")


def evaluate(model: nn.Module, data: Any, metric: str | Callable[..., Any] | Metric = "top1"
             ) -> float:
    """Score ``model`` on ``data`` with ``metric`` (higher is better; top-1 in percent).

    Args:
        model: any ``nn.Module`` (eval mode and ``torch.no_grad`` for the pass, then
            restored).
        data: a ``DataLoader`` / iterable of ``(inputs, labels)`` batches, a dataset, a
            :class:`~bitsmith.inputs.data.DataSplits` (its validation split), or an
            ``(x, y)`` tensor pair.
        metric: ``"top1"``, ``"top5"``, ``"neg_loss"``, ``"file.py:function"`` or a callable
            ``f(model)`` / ``f(model, data)``.

    Raises:
        MetricError: unlabelled data for a built-in metric; a metric function that raises
            or returns a non-number.
    """
    return resolve_metric(metric)(model, as_batches(data))
