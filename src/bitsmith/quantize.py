"""The one verb: ``bitsmith.quantize(model, policy, ...)``, plus calibration.

Typical post-training use::

    stats = bitsmith.collect_stats(model, calib_loader)        # one pass over the data
    for policy in candidates:                                  # reused for every policy
        qmodel = bitsmith.quantize(model, policy, calibration=stats)

or in one call: ``bitsmith.quantize(model, policy, calibration=calib_loader)``.
Batches may be tensors, ``(inputs, labels)`` pairs, or tuples of inputs
(only the first element is fed to the model unless ``multi_input=True``).

Everything that changes the model comes from the Policy: per-layer specs, then the
model-wide choices in order: ``calib_size`` (only the first N calibration inputs),
activation ranges, ``rounding`` (round-to-nearest, or learned by reconstruction:
:mod:`bitsmith.reconstruct`) and ``bias_correction``. The same policy and the same
calibration data (same inputs, same batches) rebuild the same model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitsmith.calibrate import TensorStats
from bitsmith.errors import InputError
from bitsmith.graph import (
    ConversionReport,
    ConversionWarning,
    LayerTable,
    apply_policy,
    convert,
    quantized_layers,
)
from bitsmith.graph.float_ops import format_float_ops
from bitsmith.policy import Policy
from bitsmith.reconstruct.bias import MeanAccumulator, bias_correct
from bitsmith.schemes.base import broadcast_shape


class CalibrationError(InputError):
    """Calibration data is missing, empty or unusable."""


def iter_batches(data: Any, num_batches: int | None = None, multi_input: bool = False
                 ) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield model-argument tuples from a tensor, a dataset (batches of 128), a DataLoader or
    any iterable of batches."""
    if isinstance(data, torch.Tensor):
        data = [data]
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        data = torch.utils.data.DataLoader(data, batch_size=128)
    if not isinstance(data, Iterable):
        raise CalibrationError(
            f"calibration data must be a tensor, a dataset, a DataLoader or an iterable of "
            "batches, "
            f"got {type(data).__name__}")
    count = 0
    for batch in data:
        if num_batches is not None and count >= num_batches:
            break
        if isinstance(batch, torch.Tensor):
            args: tuple = (batch,)
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            args = tuple(batch) if multi_input else (batch[0],)
        elif isinstance(batch, dict) and "input" in batch:
            args = (batch["input"],)
        else:
            raise CalibrationError(
                f"cannot read a batch of type {type(batch).__name__}; yield tensors or "
                "(inputs, labels) tuples")
        empty = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor) and a.numel() == 0]
        if empty:
            raise CalibrationError(
                f"calibration batch {count} is empty (shape {empty[0]}); give at least one "
                "input per batch (a few hundred representative inputs are enough)")
        count += 1
        yield args
    if count == 0:
        raise CalibrationError(
            "the calibration data yielded no batch; pass a non-empty loader (a few hundred "
            "representative inputs are enough)")


@dataclass
class CalibrationStats:
    """Per-layer input-activation statistics, gathered once and reusable for any Policy.

    Attributes:
        stats: layer -> :class:`TensorStats` of its input (ranges, histograms).
        input_shapes: layer -> shape of its first input batch.
        batches: batches seen.
        example_inputs: the first sample of the first batch (to trace the model).
        samples: calibration inputs seen (a Policy's ``calib_size`` must match it).
        means: layer -> per-channel mean of its input (float model), for bias correction.
        inputs: the calibration inputs themselves, one ``(N, ...)`` tensor per model
            argument, when collected with ``keep_inputs=True`` (learned rounding needs
            them; ranges and bias correction do not).
    """

    stats: dict[str, TensorStats]
    input_shapes: dict[str, tuple[int, ...]]
    batches: int
    example_inputs: tuple[torch.Tensor, ...] = ()
    samples: int = 0
    means: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, name: str) -> TensorStats:
        return self.stats[name]


@torch.no_grad()
def collect_stats(model: nn.Module, data: Any, *, example_inputs: Any = None,
                  num_batches: int | None = None, layers: Sequence[str] | None = None,
                  per_channel_hist: bool = False, fold_bn: bool = True,
                  multi_input: bool = False, samples: int | None = None,
                  keep_inputs: bool = False) -> CalibrationStats:
    """Record every quantizable layer's input statistics on the float model in one pass.

    ``samples`` keeps only the first N inputs (a Policy's ``calib_size``);
    ``keep_inputs`` also keeps the inputs themselves (for learned rounding).
    """
    batches = limit_samples(iter_batches(data, num_batches, multi_input), samples)
    first = next(batches, None)
    if first is None:
        raise CalibrationError("the calibration data yielded no sample")
    work, table, _ = convert(model, example_inputs if example_inputs is not None else first,
                             fold_bn=fold_bn)
    names = table.names if layers is None else list(layers)
    stats = {n: TensorStats(channel_axis=table[n].act_channel_axis,
                            keep_channel_hist=per_channel_hist) for n in names}
    shapes: dict[str, tuple[int, ...]] = {}
    means = MeanAccumulator()

    def make_hook(name: str, linear: bool):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            shapes.setdefault(name, tuple(x.shape))
            try:
                stats[name].update(x)  # also rejects NaN / inf
            except ValueError as err:
                raise CalibrationError(f"{name}: {err}") from None
            means.update(name, x, linear)
        return hook

    handles = [work.get_submodule(n).register_forward_pre_hook(
        make_hook(n, table[n].type == "Linear")) for n in names]
    count = seen = 0
    kept: list[tuple[torch.Tensor, ...]] = []
    try:
        for args in _chain(first, batches):
            work(*args)
            count += 1
            seen += args[0].shape[0]
            if keep_inputs:
                kept.append(tuple(a.detach() for a in args))
    finally:
        for h in handles:
            h.remove()
    example = tuple(a[:1] for a in first)
    inputs = tuple(torch.cat(parts) for parts in zip(*kept)) if keep_inputs else None
    return CalibrationStats(stats, shapes, count, example, seen, means.means(), inputs)


def limit_samples(batches: Iterable[tuple[torch.Tensor, ...]], samples: int | None
                  ) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches holding the first ``samples`` inputs (the last one cut); all if ``None``."""
    seen = 0
    for args in batches:
        if samples is not None and seen >= samples:
            return
        n = args[0].shape[0]
        if samples is not None and seen + n > samples:
            args = tuple(a[:samples - seen] for a in args)
            n = samples - seen
        seen += n
        yield args


def _chain(first: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield from rest


@torch.no_grad()
def calibrate(qmodel: nn.Module, data: Any, num_batches: int | None = None,
              multi_input: bool = False) -> nn.Module:
    """Calibrate every activation quantizer of ``qmodel`` by running ``data`` through it.

    Statistics are those of the float model (weights are not quantized during
    the pass), as in ONNX Runtime and TensorRT, so that the result equals
    :func:`collect_stats` + :func:`apply_stats`.
    """
    layers = list(quantized_layers(qmodel).values())
    quantizers = [m.input_quantizer for m in layers
                  if m.input_quantizer is not None and m.input_quantizer.scheme.range_based]
    was_training = qmodel.training
    qmodel.eval()
    for q in quantizers:
        q.start_calibration()
    for m in layers:
        m.bypass_weight_quantizer = True
    try:
        for args in iter_batches(data, num_batches, multi_input):
            qmodel(*args)
    finally:
        for q in quantizers:
            q.calibrating = False
        for m in layers:
            m.bypass_weight_quantizer = False
    for q in quantizers:
        q.finish_calibration()
    qmodel.train(was_training)
    return qmodel


def apply_stats(qmodel: nn.Module, stats: CalibrationStats) -> nn.Module:
    """Set activation ranges of ``qmodel`` from statistics gathered by :func:`collect_stats`."""
    for name, module in quantized_layers(qmodel).items():
        q = module.input_quantizer
        if q is None or not q.scheme.range_based:
            continue
        if name not in stats.stats or name not in stats.input_shapes:
            raise CalibrationError(f"{name}: no calibration statistics for this layer")
        shape = stats.input_shapes[name]
        q.load_stats(stats[name], broadcast_shape(torch.empty(shape, device="meta"), q.axis))
    return qmodel


@dataclass
class QuantInfo:
    """Attached to a quantized model as ``model.bitsmith``.

    ``reconstruction``: the :class:`~bitsmith.reconstruct.ReconstructionReport` when the
    Policy's rounding was learned (units, iterations, loss before / after, wall time).
    """

    policy: Policy
    layer_table: LayerTable
    report: ConversionReport
    reconstruction: Any = None


def _warn_float_ops(table: LayerTable) -> None:
    """One warning listing the parameterised ops one may expect quantized that stay float."""
    warned = table.warned_float_ops
    if not warned:
        return
    quiet = len(table.float_ops) - len(warned)
    rest = (f"\n(and {quiet} normalisation / embedding / elementwise parameter owners, float "
            "by design: LayerTable.float_ops)" if quiet else "")
    warnings.warn(f"{len(warned)} parameterised ops stay float (not in the LayerTable, not "
                  f"quantized):\n{format_float_ops(warned)}{rest}", ConversionWarning,
                  stacklevel=3)


def prepare(model: nn.Module, example_inputs: Any, fold_bn: bool = True,
            leaf_modules: Sequence[type[nn.Module]] = ()) -> tuple[nn.Module, LayerTable,
                                                                   ConversionReport]:
    """Convert without quantizing: the float (BN-folded) model, its LayerTable and report."""
    return convert(model, example_inputs, fold_bn=fold_bn, leaf_modules=leaf_modules)


def quantize(model: nn.Module, policy: Policy, *, example_inputs: Any = None,
             calibration: Any = None, num_batches: int | None = None, fold_bn: bool = True,
             leaf_modules: Sequence[type[nn.Module]] = (), multi_input: bool = False,
             cache: str | Path | None = None,
             progress: Callable[..., None] | None = None) -> nn.Module:
    """Return a quantized copy of ``model`` following ``policy`` (``model`` is not changed).

    Args:
        model: any ``nn.Module``; traced with torch.fx when possible.
        policy: layer name -> LayerSpec (layers not named stay float), and the model-wide
            choices ``calib_size``, ``rounding`` and ``bias_correction``.
        example_inputs: a tensor (or tuple) to run the model once; defaults to
            the first calibration batch.
        calibration: a DataLoader / iterable / tensor of calibration inputs, or
            :class:`CalibrationStats` from :func:`collect_stats`. Needed when the
            policy quantizes activations with a range-based scheme, learns its rounding
            (then the inputs themselves: data, or statistics collected with
            ``keep_inputs=True``) or corrects biases.
        fold_bn: fold BatchNorm into the preceding layer (post-training use).
        cache: folder of the reconstruction cache (learned rounding): finished layers and
            blocks are reused from it, new ones stored, so an interrupted run resumes.
        progress: called after each reconstructed unit with ``(record, index, total)``.

    The result carries ``result.bitsmith`` (:class:`QuantInfo`: policy,
    LayerTable, conversion report, and the reconstruction report when the rounding
    was learned).
    """
    stats = calibration if isinstance(calibration, CalibrationStats) else None
    needs_float = policy.rounding.learned or policy.bias_correction
    batches: Iterable[tuple[torch.Tensor, ...]] | None = None
    if calibration is not None and stats is None:
        stream = limit_samples(iter_batches(calibration, num_batches, multi_input),
                               policy.calib_size)
        first = next(stream)  # an empty source raises CalibrationError
        # kept in memory only when learned rounding or bias correction reads them again
        batches = list(_chain(first, stream)) if needs_float else _chain(first, stream)
        if example_inputs is None:
            example_inputs = first
    if stats is not None:
        _check_stats(stats, policy)
        if example_inputs is None:
            example_inputs = stats.example_inputs
    if example_inputs is None:
        raise CalibrationError("quantize() needs example_inputs or calibration data "
                               "to run the model once")
    work, table, report = convert(model, example_inputs, fold_bn=fold_bn,
                                  leaf_modules=leaf_modules)
    _warn_float_ops(table)
    float_model = copy.deepcopy(work) if needs_float else None
    apply_policy(work, table, policy, report)
    if stats is not None:
        apply_stats(work, stats)
    elif batches is not None:
        calibrate(work, batches, multi_input=True)
    recon = None
    if policy.rounding.learned:
        from bitsmith.reconstruct import reconstruct

        recon = reconstruct(work, float_model, _calibration_inputs(stats, batches, policy),
                            policy.rounding, cache=cache, progress=progress)
    if policy.bias_correction:
        if stats is not None:
            means = stats.means
        elif batches is not None:
            means = collect_stats(float_model, batches, fold_bn=False,
                                  multi_input=True).means
        else:
            raise CalibrationError("bias_correction needs calibration data (the input means "
                                   "of every layer); pass calibration=")
        bias_correct(work, means, float_weights={
            n: m.weight.detach() for n, m in float_model.named_modules() if n in means
            and hasattr(m, "weight")})
    work.bitsmith = QuantInfo(policy, table, report, recon)
    return work


def _check_stats(stats: CalibrationStats, policy: Policy) -> None:
    """Statistics must cover exactly the policy's ``calib_size`` inputs."""
    if policy.calib_size is not None and stats.samples != policy.calib_size:
        raise CalibrationError(
            f"the policy uses the first {policy.calib_size} calibration inputs (calib_size) "
            f"but these statistics cover {stats.samples}; collect them with "
            f"collect_stats(model, data, samples={policy.calib_size})")


def _calibration_inputs(stats: CalibrationStats | None,
                        batches: Iterable[tuple[torch.Tensor, ...]] | None,
                        policy: Policy) -> tuple[torch.Tensor, ...]:
    """The calibration inputs as one ``(N, ...)`` tensor per model argument."""
    if batches is not None:
        return tuple(torch.cat(parts) for parts in zip(*batches))
    if stats is not None and stats.inputs is not None:
        return stats.inputs
    raise CalibrationError(
        f"rounding={policy.rounding.method!r} learns from the calibration inputs themselves: "
        "pass the data (a tensor or a loader) as calibration=, or statistics from "
        "collect_stats(model, data, keep_inputs=True)")
