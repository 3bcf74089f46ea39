"""How every producer scores a model on validation data, and the validation guard.

A :class:`Scorer` is the producers' one evaluation protocol, built on the metric resolver
(:mod:`bitsmith.inputs.metric`): the user's ``evaluate(model) -> float`` (higher is better:
top-1, mAP, negative loss, ...) when given, else top-1 accuracy in percent on the labelled
``validation`` data. A metric that raises or returns a non-number raises
:class:`~bitsmith.inputs.MetricError` (an :class:`~bitsmith.errors.InputError`) naming it.

The validation guard (:func:`check_validation`) runs before any search, on the float
model's score. Its rule:

* **saturated**: top-1 on the validation data >= :data:`SATURATED_TOP1` (99.5 %). When the
  float model gets (nearly) everything right - memorised training images, a too easy
  set - a drop cannot show: a quantized model can be much worse on new data and still
  score 100 % here.
* **too small**: the tolerance is worth fewer than :data:`MIN_EXAMPLES` (5) validation
  examples, ``examples * tolerance / 100 < 5`` (top-1 in points). One or two flipped
  examples would then decide whether a policy is "within tolerance". (A zero tolerance,
  "no drop at all", is the user's explicit choice; the rule does not apply to it.)

Either finding is a warning (the run goes on), names what to use instead, and is recorded
in the run summary (``summary["guard"]``) and the run directory (``run.json`` notes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bitsmith.errors import InputError
from bitsmith.inputs.metric import Evaluate, as_batches, resolve_metric

EvaluateFn = Callable[[nn.Module], float]
SATURATED_TOP1 = 99.5
MIN_EXAMPLES = 5

__all__ = ["MIN_EXAMPLES", "SATURATED_TOP1", "EvaluateFn", "Guard", "Scorer", "ValidationWarning",
           "as_batches", "check_validation", "count_examples"]


class ValidationWarning(UserWarning):
    """The validation data cannot show the tolerance (see :func:`check_validation`)."""


def count_examples(data: Any) -> int | None:
    """Number of examples in ``data`` (``None`` when it cannot be told without iterating)."""
    if data is None:
        return None
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return int(data[0].shape[0])
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    try:
        return len(data)
    except TypeError:
        return None


class Scorer:
    """The producers' evaluation protocol (see the module docstring).

    Args:
        validation: labelled validation data (loader, dataset, ``(inputs, labels)``);
            needed without ``evaluate``; with it, passed to a metric ``f(model, data)`` and
            counted (for the guard).
        evaluate: ``evaluate(model) -> float`` (or ``f(model, data)``), higher is better; a
            :class:`bitsmith.inputs.Evaluate` (a resolved ``--metric``) works too.
    """

    def __init__(self, validation: Any = None, evaluate: Any = None) -> None:
        if evaluate is None and validation is None:
            raise InputError("no validation data and no evaluate function: give labelled "
                             "validation data (top-1 is measured on it) or evaluate=f, "
                             "f(model) -> float, higher is better")
        if evaluate is not None and not callable(evaluate):
            raise InputError(f"evaluate must be a function f(model) -> float, got "
                             f"{type(evaluate).__name__}")
        self.validation = validation
        data = None if validation is None else as_batches(validation)
        if isinstance(evaluate, Evaluate):
            self._fn = evaluate
        else:
            self._fn = Evaluate(resolve_metric(evaluate or "top1"), data)
        self.name = self._fn.name
        self.is_top1 = self.name == "top1"
        self.examples = count_examples(validation)

    def __call__(self, model: nn.Module) -> float:
        """The score of ``model`` (eval mode, no grad; its mode is restored).

        Raises:
            MetricError: the metric raised or returned something other than a number.
        """
        with torch.no_grad():
            return self._fn(model)

    def describe(self) -> str:
        """``"top-1 % on 2,000 validation examples"`` or ``"metric f (higher is better)"``."""
        n = f" on {self.examples:,} validation examples" if self.examples is not None else ""
        if self.is_top1:
            return f"top-1 %{n}"
        return f"metric {self.name!r} (higher is better){n}"


@dataclass(frozen=True)
class Guard:
    """The validation guard's verdict on the float model (see the module docstring)."""

    fp32: float
    examples: int | None
    tolerance: float | None
    metric: str
    saturated: bool
    too_small: bool
    message: str

    @property
    def fired(self) -> bool:
        return self.saturated or self.too_small

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fired": self.fired}


def check_validation(fp32: float, examples: int | None, tolerance: float | None,
                     is_top1: bool = True, metric: str = "top1") -> Guard:
    """Apply the rule of the module docstring; warn (:class:`ValidationWarning`) if it fires.

    Args:
        fp32: the float model's score on the validation data (top-1 in percent when
            ``is_top1``).
        examples: validation examples (``None``: unknown, the size rule is skipped).
        tolerance: the accuracy drop the run allows, in points (``None`` or ``0``: the
            size rule is skipped).
    """
    saturated = is_top1 and fp32 >= SATURATED_TOP1
    too_small = (is_top1 and examples is not None and tolerance is not None
                 and tolerance > 0  # a zero tolerance refuses any drop: nothing to resolve
                 and examples * tolerance / 100.0 < MIN_EXAMPLES)
    problems = []
    if saturated:
        problems.append(
            f"the float model scores {fp32:.2f}% top-1 on the validation data (>= "
            f"{SATURATED_TOP1}%): an accuracy drop cannot show there (images it has "
            "memorised, or a set too easy to tell policies apart). Use held-out images the "
            "model was not trained on (for CIFAR-10 the JPEG validation split), not "
            "training images")
    if too_small and examples is not None and tolerance is not None:
        need = math.ceil(100.0 * MIN_EXAMPLES / tolerance)
        problems.append(
            f"a tolerance of {tolerance:g} points is {examples * tolerance / 100.0:.1f} of the "
            f"{examples:,} validation examples: one or two flipped examples decide. Use at "
            f"least {need:,} validation examples or a tolerance of at least "
            f"{100.0 * MIN_EXAMPLES / examples:.2g} points")
    message = "; ".join(problems)
    if message:
        warnings.warn(f"validation guard: {message}", ValidationWarning, stacklevel=2)
    return Guard(float(fp32), examples, tolerance, metric, saturated, too_small, message)
