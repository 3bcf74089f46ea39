"""How every producer scores a model on validation data, and the validation guard.

A :class:`Scorer` is the producers' one evaluation protocol: the user's
``evaluate(model) -> float`` (higher is better: top-1, mAP, negative loss, ...) when given,
else top-1 accuracy in percent on the labelled ``validation`` data
(:func:`bitsmith.engine.evaluate`). A score that is not a finite number raises
:class:`MetricError` (an :class:`~bitsmith.errors.InputError`) naming the metric.

The validation guard (:func:`check_validation`) runs before any search, on the float
model's score. Its rule:

* **saturated**: top-1 on the validation data >= :data:`SATURATED_TOP1` (99.5 %). When the
  float model gets (nearly) everything right - memorised training images, a too easy
  set - a drop cannot show: a quantized model can be much worse on new data and still
  score 100 % here.
* **too small**: the tolerance is worth fewer than :data:`MIN_EXAMPLES` (5) validation
  examples, ``examples * tolerance / 100 < 5`` (top-1 in points). One or two flipped
  examples would then decide whether a policy is "within tolerance".

Either finding is a warning (the run goes on), names what to use instead, and is recorded
in the run summary (``summary["guard"]``) and the run directory (``run.json`` notes).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bitsmith.engine import evaluate as top1
from bitsmith.errors import InputError

Evaluate = Callable[[nn.Module], float]
SATURATED_TOP1 = 99.5
MIN_EXAMPLES = 5
BATCH = 256


class MetricError(InputError):
    """A metric that raises or returns something other than a finite number."""


class ValidationWarning(UserWarning):
    """The validation data cannot show the tolerance (see :func:`check_validation`)."""


def as_batches(data: Any, batch_size: int = BATCH) -> Iterable:
    """``(inputs, labels)`` batches of ``data``: a loader or iterable of batches as it is;
    a dataset or an ``(inputs, labels)`` tensor pair in a ``DataLoader``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data = TensorDataset(data[0], data[1])
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


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


def as_score(value: Any, name: str) -> float:
    """``value`` as a finite float (Python / numpy number or one-element tensor).

    Raises:
        MetricError: anything else, naming the metric.
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MetricError(f"metric {name!r} returned {type(value).__name__}, not a number; "
                          "return one float (higher is better)")
    score = float(value)
    if not math.isfinite(score):
        raise MetricError(f"metric {name!r} returned {score}; return a finite number")
    return score


class Scorer:
    """The producers' evaluation protocol (see the module docstring).

    Args:
        validation: labelled validation data (loader, dataset, ``(inputs, labels)``);
            needed without ``evaluate``; with it, only counted (for the guard).
        evaluate: ``evaluate(model) -> float``, higher is better.
        device: where top-1 runs.
    """

    def __init__(self, validation: Any = None, evaluate: Evaluate | None = None,
                 device: str | torch.device = "cpu") -> None:
        if evaluate is None and validation is None:
            raise InputError("no validation data and no evaluate function: give labelled "
                             "validation data (top-1 is measured on it) or evaluate=f, "
                             "f(model) -> float, higher is better")
        if evaluate is not None and not callable(evaluate):
            raise InputError(f"evaluate must be a function f(model) -> float, got "
                             f"{type(evaluate).__name__}")
        self.validation, self.evaluate, self.device = validation, evaluate, device
        self.is_top1 = evaluate is None
        self.name = "top-1 %" if evaluate is None else getattr(evaluate, "__name__", "evaluate")
        self.examples = count_examples(validation)

    def __call__(self, model: nn.Module) -> float:
        """The score of ``model`` (eval mode during the call; its mode is restored)."""
        if self.evaluate is None:
            return top1(model, as_batches(self.validation), device=self.device).accuracy
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.evaluate(model)
        except MetricError:
            raise
        except Exception as err:  # noqa: BLE001 - a user function: name it, keep one line
            raise MetricError(f"metric {self.name!r} raised {type(err).__name__}: {err}; fix "
                              "the metric function (it gets the model, returns a float)"
                              ) from err
        finally:
            model.train(was_training)
        return as_score(value, self.name)

    def describe(self) -> str:
        """``"top-1 % on 2,000 validation examples"`` or ``"metric f (higher is better)"``."""
        if self.is_top1:
            n = f"{self.examples:,} " if self.examples is not None else ""
            return f"top-1 % on {n}validation examples"
        return f"metric {self.name!r} (higher is better)"


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
                     is_top1: bool = True, metric: str = "top-1 %") -> Guard:
    """Apply the rule of the module docstring; warn (:class:`ValidationWarning`) if it fires.

    Args:
        fp32: the float model's score on the validation data (top-1 in percent when
            ``is_top1``).
        examples: validation examples (``None``: unknown, the size rule is skipped).
        tolerance: the accuracy drop the run allows, in points (``None``: no tolerance).
    """
    saturated = is_top1 and fp32 >= SATURATED_TOP1
    too_small = (is_top1 and examples is not None and tolerance is not None
                 and examples * tolerance / 100.0 < MIN_EXAMPLES)
    problems = []
    if saturated:
        problems.append(
            f"the float model scores {fp32:.2f}% top-1 on the validation data (>= "
            f"{SATURATED_TOP1}%): it has (nearly) memorised it, so an accuracy drop cannot "
            "show. Use held-out images the model was not trained on (for CIFAR-10 the JPEG "
            "validation split), not training images")
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
