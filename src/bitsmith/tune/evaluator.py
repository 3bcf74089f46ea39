"""Evaluators: apply a configuration, calibrate, measure accuracy and cost — fast.

:class:`Evaluator` is the protocol the tuner talks to; :class:`TorchEvaluator`
is the built-in one (fake quantization in PyTorch). What makes it fast:

* calibration statistics are collected **once per calibration-set size** on the
  float model (:func:`bitsmith.collect_stats`) and reused by every
  configuration (the observers cache their ranges inside the statistics);
* fake-quantized **weights are cached** per (layer, weight QSpec) and baked into
  the evaluated copy, so a weight observer (MSE, percentile) runs once per layer
  and spec, not once per trial;
* **results are cached** by (policy fingerprint, calibration size);
* the validation set is cut into **stages** (e.g. the first 25 %, then the
  rest): after each stage ``on_stage`` may stop a hopeless configuration (the
  tuner wires it to an Optuna pruner); the later stages only evaluate the new
  images.

* with ``bias_correction`` in the configuration (and so in its Policy), each quantized
  layer's bias is corrected for its weights' mean output error
  (:mod:`bitsmith.reconstruct.bias`; input means come with the statistics, shifts are
  cached per layer and spec) exactly as ``bitsmith.quantize`` corrects it.

The model is run through a :class:`Backend`. :class:`TorchBackend` runs the
fake-quantized PyTorch module. :class:`~bitsmith.tune.runtime.OnnxRuntimeBackend`
exports each configuration with :func:`bitsmith.export.export_onnx` and runs the
integer model in ONNX Runtime: accuracy on the runtime, and
:attr:`Measurement.latency_ms`, the tuner's optional second objective. Any backend
whose ``compile`` returns a callable running the model and whose ``latency_ms``
times it plugs in the same way (``fake_quant = False`` keeps the weight quantizers
on the model the backend receives, for exporters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bitsmith.cost import estimate
from bitsmith.cost.model import CostReport
from bitsmith.engine import evaluate as engine_evaluate
from bitsmith.graph import quantized_layers
from bitsmith.policy import Policy
from bitsmith.quantize import CalibrationStats, collect_stats, prepare, quantize
from bitsmith.reconstruct.bias import correct_bias, output_shift
from bitsmith.scoring import EvaluateFn, Scorer
from bitsmith.tune.errors import TuneError
from bitsmith.tune.features import descriptors_of
from bitsmith.tune.space import Choices, TuneSpace

# on_stage(stage index, images seen, accuracy % so far, FP32 accuracy % on the same images)
# -> True to stop (prune) the configuration.
StageCallback = Callable[[int, int, float, float], bool]


@dataclass(frozen=True)
class Measurement:
    """What one evaluated configuration scored.

    Attributes:
        accuracy: top-1 accuracy in percent on ``images`` validation images.
        fp32_accuracy: the float model's accuracy on the same images, percent.
        drop: ``fp32_accuracy - accuracy`` in points (positive = worse).
        images: validation images evaluated (fewer than all when pruned).
        size_bytes, fp32_bytes, compression: deployed size (scales included), see
            :func:`bitsmith.cost.estimate`.
        bitops, fp32_bitops: BitOPs per example.
        avg_weight_bits: weight-count-weighted mean bit width.
        latency_ms: per-batch latency on the runtime, if the backend measures it.
        kernels: layers per kernel class (``integer``, ``weight_only``, ``float``) in the
            runtime's optimised graph, if the backend reports them (ONNX Runtime does).
        seconds: wall time of the evaluation.
        pruned: stopped early after a stage.
        cached: served from the result cache.
    """

    accuracy: float
    fp32_accuracy: float
    drop: float
    images: int
    size_bytes: int
    fp32_bytes: int
    compression: float
    bitops: int
    fp32_bitops: int
    avg_weight_bits: float
    latency_ms: float | None = None
    kernels: dict[str, int] | None = None
    seconds: float = 0.0
    pruned: bool = False
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Evaluator(Protocol):
    """What the tuner needs from an evaluator (implement it to plug in another runtime)."""

    space: TuneSpace
    layer_names: list[str]
    measures_latency: bool

    def policy(self, config: Choices) -> Policy:
        """The Policy of a configuration."""

    def cost(self, config: Choices) -> CostReport:
        """Analytic cost of a configuration (no data needed)."""

    def evaluate(self, config: Choices, on_stage: StageCallback | None = None) -> Measurement:
        """Quantize, calibrate and measure one configuration."""


class Backend(Protocol):
    """Runs a quantized model: PyTorch fake quantization, or an integer runtime.

    ``fake_quant``: whether the model handed to :meth:`compile` may have its weights
    baked (fake-quantized values, weight quantizers removed; fastest in PyTorch).
    An exporter needs the quantizers: set it to ``False``.
    """

    measures_latency: bool
    fake_quant: bool

    def compile(self, qmodel: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
        """A callable mapping an input batch ``(N, ...)`` to logits ``(N, classes)``."""

    def latency_ms(self, runner: Callable[[Tensor], Tensor], example: Tensor) -> float | None:
        """Median latency of one batch ``example`` in milliseconds (``None``: not measured)."""


class TorchBackend:
    """Runs the fake-quantized PyTorch module itself (no latency: it is not a deployment)."""

    measures_latency = False
    fake_quant = True

    def compile(self, qmodel: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
        return qmodel.eval()

    def latency_ms(self, runner: Callable[[Tensor], Tensor], example: Tensor) -> float | None:
        return None


class _Runner(nn.Module):
    """Wraps a backend callable as a module so :func:`bitsmith.engine.evaluate` can run it."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _stack(data: Any, what: str) -> tuple[Tensor, Tensor | None]:
    """``(inputs, labels or None)`` tensors from a tensor, an ``(x, y)`` pair, a dataset or a
    ``DataLoader`` (its batches concatenated)."""
    if isinstance(data, DataLoader):
        data = _concat(data, what)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data, labels = data
    else:
        labels = None
    if isinstance(data, Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise TuneError(f"{what}: the tensor is empty (shape {tuple(data.shape)}); give "
                            "at least one input")
        return data, labels
    try:
        n = len(data)
    except TypeError:
        raise TuneError(f"{what}: expected a tensor, an (inputs, labels) pair or a dataset, "
                        f"got {type(data).__name__}") from None
    if n == 0:
        raise TuneError(f"{what}: the data set is empty")
    items = [data[i] for i in range(n)]
    if isinstance(items[0], Tensor):
        return torch.stack(items), None
    xs = torch.stack([torch.as_tensor(it[0]) for it in items])
    ys = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    return xs, ys


def _concat(loader: DataLoader, what: str) -> tuple[Tensor, Tensor | None]:
    xs, ys = [], []
    for batch in loader:
        if isinstance(batch, Tensor):
            xs.append(batch)
        else:
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise TuneError(f"{what}: the data loader yielded no batch")
    return torch.cat(xs), (torch.cat(ys) if ys else None)


def _batches(x: Tensor, y: Tensor | None, batch_size: int) -> list:
    idx = range(0, len(x), batch_size)
    if y is None:
        return [x[i:i + batch_size] for i in idx]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in idx]


def stage_bounds(n: int, stages: Sequence[float | int]) -> list[int]:
    """Cumulative image counts of the evaluation stages.

    ``stages`` are fractions in (0, 1] or image counts; the last stage always
    ends at ``n``. E.g. ``stage_bounds(2000, (0.25, 1.0)) == [500, 2000]``.
    """
    out: list[int] = []
    for s in stages:
        k = int(round(s * n)) if isinstance(s, float) and s <= 1.0 else int(s)
        k = min(max(k, 1), n)
        if not out or k > out[-1]:
            out.append(k)
    if not out or out[-1] != n:
        out.append(n)
    return out


class TorchEvaluator:
    """The built-in evaluator: PyTorch fake quantization with shared statistics and caches.

    Args:
        model: the trained float model (not modified).
        calibration: unlabeled calibration inputs: a tensor ``(N, ...)``, an
            ``(inputs, labels)`` pair, a dataset of inputs / ``(input, label)`` or a
            ``DataLoader``; the first ``calib_size`` of them are used.
        validation: labeled validation data (``(inputs, labels)``, a dataset or a
            ``DataLoader``); may be ``None`` with ``evaluate``.
        space: the search space (its ``calib_size`` choices must fit ``calibration``).
        stages: evaluation stages, fractions of the validation set or counts (top-1 only).
        batch_size: images per forward pass.
        backend: how the quantized model is run (default :class:`TorchBackend`).
        evaluate: the user's metric ``f(model) -> float`` (higher is better) instead of
            top-1 on ``validation``; one stage. ``Measurement.accuracy`` and ``drop`` are
            then in the metric's unit.
        cache: reconstruction cache folder, for configurations with a learned rounding
            (finished layers and blocks are shared between configurations and runs).
    """

    def __init__(self, model: nn.Module, calibration: Any, validation: Any, space: TuneSpace,
                 *, stages: Sequence[float | int] = (0.25, 1.0), batch_size: int = 500,
                 backend: Backend | None = None, evaluate: EvaluateFn | None = None,
                 cache: str | Path | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TuneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model.eval()
        self.space = space
        self.backend = backend or TorchBackend()
        self.measures_latency = bool(self.backend.measures_latency)
        self.batch_size = int(batch_size)
        self.cache = cache
        self._calib, _ = _stack(calibration, "calibration")
        self.scorer = Scorer(validation, evaluate)
        if evaluate is None:
            self._val_x, self._val_y = _stack(validation, "validation")
            if self._val_y is None:
                raise TuneError("validation: labels are needed to measure accuracy (or give "
                                "evaluate=f, f(model) -> float)")
        else:
            self._val_x, self._val_y = self._calib[:1], None
        need = max(space.calib_size)
        if need > len(self._calib):
            raise TuneError(f"the space asks for calib_size={need} but only {len(self._calib)} "
                            "calibration inputs were given")
        self._stats: dict[int, CalibrationStats] = {}
        self._weights: dict[tuple[str, Any], Tensor] = {}
        self._shifts: dict[tuple[str, Any, int], Tensor | None] = {}
        self._results: dict[tuple[str, int, bool], Measurement] = {}
        ref = self.stats(need)
        work, self.table, _ = prepare(self.model, ref.example_inputs)
        self._work = work
        self.layer_names: list[str] = self.table.names
        self.descriptors = descriptors_of(work, self.table)
        self.weight_params = {i.name: i.weight_params for i in self.table}
        self.signed_inputs = {n: bool(ref[n].min < 0) for n in self.layer_names}
        self.bounds = (stage_bounds(len(self._val_x), stages) if evaluate is None
                       else [self.scorer.examples or 0])
        attach = getattr(self.backend, "attach", None)
        if attach is not None:          # e.g. a runtime backend taking calibration inputs
            attach(self)
        self.fp32_at = self._stage_accuracies(self.model)
        self.fp32_accuracy = self.fp32_at[-1]

    # ----------------------------------------------------------- components
    def stats(self, n: int) -> CalibrationStats:
        """Calibration statistics of the first ``n`` inputs (collected once per ``n``)."""
        if n not in self._stats:  # learned rounding needs the inputs themselves
            learned = any(r != "nearest" for r in self.space.rounding)
            self._stats[n] = collect_stats(self.model, self.calibration_data(n),
                                           keep_inputs=learned)
        return self._stats[n]

    def calibration_data(self, n: int) -> list[Tensor]:
        """The first ``n`` calibration inputs in batches of ``batch_size``: with a
        configuration's Policy, ``bitsmith.quantize(model, policy, calibration=...)`` of
        these batches rebuilds exactly the model this evaluator measures."""
        return _batches(self._calib[:n], None, self.batch_size)

    def calibration_batches(self, k: int | None = None) -> list[Tensor]:
        """The calibration inputs in batches of ``batch_size`` (the first ``k`` batches)."""
        out = _batches(self._calib, None, self.batch_size)
        return out if k is None else out[:k]

    def means(self, n: int) -> dict[str, Tensor]:
        """Per-channel input means of every quantizable layer over the first ``n``
        calibration inputs (float model; gathered with the statistics), for bias correction."""
        return self.stats(n).means

    def policy(self, config: Choices) -> Policy:
        return self.space.to_policy(config, self.layer_names, self.signed_inputs)

    def cost(self, config: Choices) -> CostReport:
        return estimate(self.table, self.policy(config))

    def _calib_size(self, config: Choices) -> int:
        return int(config.get("calib_size", self.space.calib_size[0]))

    def _bias_correction(self, config: Choices) -> bool:
        return bool(config.get("bias_correction", self.space.bias_correction[0]))

    def quantized_model(self, config: Choices) -> nn.Module:
        """The quantized copy of the model for ``config`` (weight quantizers kept, not
        baked; biases corrected when the configuration asks for ``bias_correction``)."""
        return self._quantized(self.policy(config), self._calib_size(config), bake=False)

    def _quantized(self, policy: Policy, n_calib: int, bake: bool) -> nn.Module:
        """``bitsmith.quantize(model, policy, calibration=first n_calib inputs)``, faster.

        Round-to-nearest: weights and bias shifts come from per-(layer, spec) caches (the
        same numbers ``quantize`` computes). Learned rounding: ``quantize`` itself, with the
        reconstruction cache (a layer's learned codes depend on the whole policy)."""
        if policy.rounding.learned:
            qmodel = quantize(self.model, policy, calibration=self.stats(n_calib),
                              cache=self.cache)
            if bake:  # weights already hold their grid values (frozen quantizers)
                for m in quantized_layers(qmodel).values():
                    m.weight_quantizer = None
            return qmodel
        qmodel = quantize(self.model, policy.with_options(bias_correction=False),
                          calibration=self.stats(n_calib))
        self._prepare_layers(qmodel, n_calib, policy.bias_correction, bake)
        qmodel.bitsmith.policy = policy
        return qmodel

    def state_dict(self, config: Choices) -> dict[str, Tensor]:
        """The quantized model's state dict for ``config`` (weights and every quantizer's
        scales / zero points, fitted by one forward pass), contiguous copies."""
        n = self._calib_size(config)
        qmodel = self.quantized_model(config)
        with torch.no_grad():
            qmodel(*self.stats(n).example_inputs)
        return {k: v.detach().contiguous().clone() for k, v in qmodel.state_dict().items()}

    def _prepare_layers(self, qmodel: nn.Module, n_calib: int, bias_correction: bool,
                        bake: bool) -> None:
        """Per quantized layer: correct the bias (if asked) and, with ``bake``, replace the
        weight by its cached fake-quantized value (same numbers, computed once per spec)."""
        means = self.means(n_calib) if bias_correction else None
        with torch.no_grad():
            for name, m in quantized_layers(qmodel).items():
                q = m.weight_quantizer
                if q is None:
                    continue
                key = (name, q.spec)
                if key not in self._weights:
                    self._weights[key] = q(m.weight.detach()).detach().clone()
                wq = self._weights[key]
                if means is not None and name in means:
                    skey = (name, q.spec, n_calib)
                    if skey not in self._shifts:
                        self._shifts[skey] = output_shift(m, wq - m.weight.detach(),
                                                          means[name])
                    if self._shifts[skey] is not None:
                        correct_bias(m, self._shifts[skey])
                if bake:
                    m.weight.data = wq
                    m.weight_quantizer = None

    def _count_correct(self, fn: Callable[[Tensor], Tensor], start: int, end: int) -> int:
        batches = _batches(self._val_x[start:end], self._val_y[start:end], self.batch_size)
        res = engine_evaluate(_Runner(fn), batches)
        return int(round(res.accuracy * res.count / 100.0))

    def _stage_accuracies(self, fn: Callable[[Tensor], Tensor]) -> list[float]:
        if not self.scorer.is_top1:
            return [self.scorer(fn if isinstance(fn, nn.Module) else _Runner(fn))]
        correct, out, start = 0, [], 0
        for end in self.bounds:
            correct += self._count_correct(fn, start, end)
            out.append(100.0 * correct / end)
            start = end
        return out

    # ------------------------------------------------------------- evaluate
    def evaluate(self, config: Choices, on_stage: StageCallback | None = None) -> Measurement:
        """Quantize with ``config``, calibrate from the shared statistics, measure.

        ``on_stage`` is called after every stage but the last; returning True
        stops the evaluation and returns a ``pruned`` measurement on the images
        seen so far (not cached).
        """
        t0 = time.perf_counter()
        policy = self.policy(config)
        n_calib = self._calib_size(config)
        bias_correction = self._bias_correction(config)
        key = (policy.fingerprint(), n_calib, bias_correction)
        if key in self._results:
            return replace(self._results[key], cached=True, seconds=0.0)
        cost = estimate(self.table, policy)
        qmodel = self._quantized(policy, n_calib,
                                 bake=bool(getattr(self.backend, "fake_quant", True)))
        example = self._val_x[: self.batch_size]
        runner = self.backend.compile(qmodel, example)
        acc, start, pruned = self._measure(runner, on_stage)
        fp32 = self.fp32_at[self.bounds.index(start)]
        m = Measurement(
            accuracy=acc, fp32_accuracy=fp32, drop=fp32 - acc, images=start,
            size_bytes=cost.size_bytes, fp32_bytes=cost.fp32_bytes,
            compression=cost.compression, bitops=cost.bitops, fp32_bitops=cost.fp32_bitops,
            avg_weight_bits=cost.avg_weight_bits,
            latency_ms=None if pruned else self.backend.latency_ms(runner, example),
            kernels=getattr(self.backend, "kernel_counts", lambda _r: None)(runner),
            seconds=time.perf_counter() - t0, pruned=pruned)
        if not pruned:
            self._results[key] = m
        return m


    def _measure(self, runner: Callable[[Tensor], Tensor], on_stage: StageCallback | None
                 ) -> tuple[float, int, bool]:
        """``(score, examples seen, pruned)``: staged top-1, or the user's metric once."""
        if not self.scorer.is_top1:
            return self._stage_accuracies(runner)[0], self.bounds[-1], False
        correct, start, acc = 0, 0, 0.0
        for i, end in enumerate(self.bounds):
            correct += self._count_correct(runner, start, end)
            acc, start = 100.0 * correct / end, end
            if on_stage is not None and i < len(self.bounds) - 1 and on_stage(
                    i, end, acc, self.fp32_at[i]):
                return acc, start, True
        return acc, start, False


def as_mapping(m: Measurement) -> Mapping[str, Any]:
    """Measurement as a JSON-able mapping (NaN kept as ``None``)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in m.to_dict().items()}
