"""One workload registry: a model, its data splits and its metric, from user specs.

:func:`load_workload` resolves a model spec (:func:`bitsmith.inputs.model.resolve_model`),
data specs (:func:`bitsmith.inputs.data.resolve_data`) and a metric
(:func:`bitsmith.inputs.metric.resolve_metric`), checks that the model takes the data
(:func:`bitsmith.inputs.data.check_model_input`) and returns a :class:`Workload`.

The built-in names are shortcuts through the same resolvers:

============  =================================================================
``resnet20``  ``resolve_model("resnet20", pretrained=True)`` + ``cifar10`` data
``resnet32``  ``resolve_model("resnet32", pretrained=True)`` + ``cifar10`` data
``digits``    ``SmallCNN`` trained here on the digits train split (``epochs``) +
              ``digits`` data
============  =================================================================

Any other registered CIFAR ResNet (``resnet44`` ... ``resnet1202``) with a checkpoint
defaults to ``cifar10`` data too; every other model needs ``data``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitsmith.inputs.data import DataSplits, check_model_input, resolve_data
from bitsmith.inputs.errors import DataSpecError
from bitsmith.inputs.metric import Evaluate, Metric, resolve_metric
from bitsmith.inputs.model import ModelSpec, describe_model, resolve_model
from bitsmith.models.cifar_resnet import DEPTHS

WORKLOADS = ("resnet20", "resnet32", "digits")
CIFAR_MODELS = tuple(f"resnet{d}" for d in DEPTHS)
DATASET_NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "digits": "sklearn digits"}
_DIGITS_MEMO: dict[tuple[int, int], nn.Module] = {}


def trained_digits_model(epochs: int = 30, seed: int = 0) -> nn.Module:
    """``SmallCNN`` trained on the digits train split (AdamW 3e-3, wd 1e-4, batch 64);
    memoised per ``(epochs, seed)`` in the process, a fresh copy per call; eval mode."""
    key = (int(epochs), int(seed))
    if key not in _DIGITS_MEMO:
        from bitsmith.data import digits_splits, make_loader
        from bitsmith.engine import fit
        from bitsmith.models import SmallCNN

        torch.manual_seed(seed)
        splits = digits_splits(seed=seed)
        net = SmallCNN()
        fit(net, make_loader(splits.train, batch_size=64, shuffle=True, seed=seed),
            epochs=epochs, lr=3e-3, weight_decay=1e-4)
        _DIGITS_MEMO[key] = net.eval()
    return copy.deepcopy(_DIGITS_MEMO[key]).eval()


@dataclass
class Workload:
    """A model with its data splits and metric.

    Attributes:
        name: the workload name (built-in) or the model spec.
        model: the float model, eval mode.
        data: the splits (:class:`~bitsmith.inputs.data.DataSplits`).
        evaluate: ``evaluate(model) -> float`` on the validation split, higher is better.
        model_description: how the model was given (spec + checkpoint file).
        batch_size: batch size of the loaders below.
        checkpoint: ``{"path", "sha256"}`` of the weights file, for provenance (or ``None``).
    """

    name: str
    model: nn.Module
    data: DataSplits
    evaluate: Evaluate
    model_description: str
    batch_size: int = 128
    checkpoint: dict[str, str] | None = None
    _loaders: dict[str, Any] = field(default_factory=dict, repr=False)

    def loader(self, role: str, batch_size: int | None = None, **kw: Any) -> Any:
        """A loader over a split (``calibration``, ``validation``, ``test``, ``train``)."""
        if batch_size is None and not kw:
            if role not in self._loaders:
                self._loaders[role] = self.data.loader(role, self.batch_size)
            return self._loaders[role]
        return self.data.loader(role, batch_size or self.batch_size, **kw)

    @property
    def calibration(self) -> Any:
        """Loader over the calibration split."""
        return self.loader("calibration")

    @property
    def validation(self) -> Any:
        """Loader over the validation split (every decision is made on it)."""
        return self.loader("validation")

    val = validation

    @property
    def test(self) -> Any:
        """Loader over the test split (reported only), ``None`` when there is none."""
        return self.loader("test") if self.data.get("test") is not None else None

    @property
    def metric(self) -> Metric:
        return self.evaluate.metric

    @property
    def dataset(self) -> str:
        """Short name of the data for reports (``"CIFAR-10"``, a folder, a file, ...)."""
        source = self.data.info["calibration"].source
        return DATASET_NAMES.get(source, source)

    @property
    def eval_set(self) -> str:
        """What reported (test) numbers are measured on."""
        role = "test" if "test" in self.data.info else "validation"
        return self.data.info[role].description

    def describe(self) -> dict[str, Any]:
        """Model, metric and data splits as a JSON-serialisable dict (for run summaries)."""
        return {"workload": self.name, "model": self.model_description,
                "checkpoint": self.checkpoint, "metric": self.metric.name,
                "data": self.data.describe()}


def _default_data(name: str) -> str:
    if name in CIFAR_MODELS:
        return "cifar10"
    if name == "digits":
        return "digits"
    raise DataSpecError(f"model {name!r}: give its data (--data FOLDER, a tensors file, "
                        "file.py:function or a built-in: cifar10, mnist, digits)")


def load_workload(model: ModelSpec, data: Any = None, *, checkpoint: str | Path | None = None,
                  model_kwargs: str | Path | Mapping[str, Any] | None = None,
                  pretrained: bool | None = None, sha256: str | None = None,
                  metric: Any = "top1", batch_size: int = 128, epochs: int = 30,
                  seed: int = 0, check_input: bool = True, **data_options: Any) -> Workload:
    """Resolve a model, its data and its metric into a :class:`Workload`.

    Args:
        model: a built-in workload name (see the module docstring) or any model spec of
            :func:`~bitsmith.inputs.model.resolve_model`.
        data: any data spec of :func:`~bitsmith.inputs.data.resolve_data`; default for
            the built-ins and CIFAR ResNets: their own data.
        checkpoint, model_kwargs, sha256: see :func:`resolve_model`.
        pretrained: load shipped weights; default ``True`` for ``resnet20`` / ``resnet32``
            without a checkpoint.
        metric: ``top1`` (default), ``top5``, ``neg_loss``, ``file.py:function`` or a callable.
        batch_size: batch size of the workload's loaders.
        epochs: training epochs of the ``digits`` model.
        seed: seed of the data split and of the ``digits`` training.
        check_input: run one input through the model first (clear error on a mismatch).
        **data_options: the other keyword arguments of :func:`resolve_data` (calibration,
            validation, test, train, preset, image_size, split, calibration_size, ...).

    Raises:
        InputError subclasses (exit code 2): ``ModelSpecError``, ``CheckpointError``,
        ``DataSpecError``, ``MetricError``.
    """
    name = model if isinstance(model, str) else describe_model(model)
    spec = model.strip() if isinstance(model, str) else model
    if spec == "digits" and checkpoint is None and not model_kwargs:
        net = trained_digits_model(epochs, seed)
        description = f"SmallCNN trained {epochs} epochs on the digits train split (seed {seed})"
    else:
        if pretrained is None:
            pretrained = spec in ("resnet20", "resnet32") and checkpoint is None
        net = resolve_model("small_cnn" if spec == "digits" else spec, checkpoint=checkpoint,
                            model_kwargs=model_kwargs, pretrained=pretrained, sha256=sha256)
        description = describe_model(spec, checkpoint) + (" (pretrained)" if pretrained else "")
    explicit = any(data_options.get(k) is not None for k in ("calibration", "validation"))
    if data is None and not explicit:
        data = _default_data(spec if isinstance(spec, str) else "")
    resolved_metric = resolve_metric(metric)
    splits = resolve_data(data, seed=seed, require_labels=resolved_metric.needs_labels,
                          **data_options)
    if check_input:
        probe = splits.validation if splits.validation is not None else splits.calibration
        num_classes = len(splits.classes) if splits.classes and splits.labelled("validation") \
            else None
        check_model_input(net, probe, model_name=f"model {description!r}",
                          data_name=f"data {splits.info['calibration'].source!r}",
                          num_classes=num_classes)
    if splits.validation is None:
        raise DataSpecError("no validation data: give a data source to split (--data) or "
                            "validation data (--validation-data)")
    evaluate = resolved_metric.evaluator(splits.loader("validation", batch_size))
    provenance = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        provenance = {"path": str(path),
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return Workload(name, net, splits, evaluate, description, batch_size, provenance)
