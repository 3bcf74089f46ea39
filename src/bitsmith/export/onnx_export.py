"""``export_onnx``: a quantized model as an ONNX QDQ graph for ONNX Runtime, and its check.

Type choices (``docs/export.md``): activations **uint8** (asymmetric,
``uniform_asymmetric``; symmetric grids are shifted by 128), weights **int8**
with zero point 0, per-channel scales on the output-channel axis, biases
**int32** at ``s_in · s_w``. This is ONNX Runtime's u8s8 path (``QLinearConv``,
``QGemm``, ``QLinearAdd``...). Sub-8-bit weights are stored as int8 holding
their low-bit grid (ONNX Runtime's int4 ``DequantizeLinear`` is not fused into
``QLinearConv``, so int4 storage would forfeit the integer kernel); the packed
artifact holds the real low-bit size.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from bitsmith.atomic import atomic_path
from bitsmith.export.errors import ExportError, ExportWarning
from bitsmith.export.float_graph import dequantized_copy, export_float_onnx
from bitsmith.export.kernels import runtime_kernels
from bitsmith.export.onnx_qdq import INT_OPS, LayerPlan, absent_layers, add_outputs, insert_qdq
from bitsmith.export.ort import make_session, run, tensor_ranges
from bitsmith.export.packed import _quant_info
from bitsmith.export.qparams import act_qparams, nbits_weight, weight_qparams
from bitsmith.export.runtime_sim import RuntimePoint, locate_runtime_points
from bitsmith.quantize import quant_info


@dataclass
class OnnxExportReport:
    """What :func:`export_onnx` wrote: per-layer kernels, extra points, file size.

    ``layers`` maps every layer of the LayerTable to the op ONNX Runtime runs for it, read from its
    optimised graph (``"QLinearConv"``, ``"MatMulIntegerToFloat"``, ``"MatMulNBits"``,
    ``"FusedConv"``, ...; ``"?"`` if not found; ``"absent"`` for a layer the exporter removed
    because its output reaches no model output, also listed in ``absent_layers``);
    ``integer_layers`` / ``weight_only_layers`` / ``float_layers`` count the others by kernel
    class (:mod:`bitsmith.export.kernels`);
    ``kernels`` counts every compute kernel of the optimised graph by class (attention's
    activation-by-activation MatMuls included); ``intended`` is what the export asked for.
    Without ``check_kernels`` the counts follow the intent.
    ``runtime_points``: the tensors the integer chains read quantized where the simulation
    reads float, located in the quantized model (:func:`runtime_simulation` turns them into
    a simulation of what ONNX Runtime runs); ``runtime_unmatched``: such tensors it could
    not locate (inside leaf modules, or the model was not traced); ``int32_bias_layers``:
    layers whose bias the export rounded to int32 codes at ``s_in · s_w``.
    """

    path: str
    file_bytes: int
    opset: int
    integer_outputs: bool
    integer_residuals: bool
    layers: dict[str, str] = field(default_factory=dict)
    integer_layers: int = 0
    float_layers: int = 0
    weight_only_layers: int = 0
    absent_layers: list[str] = field(default_factory=list)
    kernels: dict[str, int] = field(default_factory=dict)
    intended: dict[str, str] = field(default_factory=dict)
    calibrated_points: list[str] = field(default_factory=list)
    runtime_points: list[RuntimePoint] = field(default_factory=list)
    runtime_unmatched: list[str] = field(default_factory=list)
    int32_bias_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def float_layer_names(self) -> list[str]:
        from bitsmith.export.kernels import kernel_class

        return [n for n, op in self.layers.items()
                if kernel_class(op) not in ("integer", "weight_only", "absent")]

    def runtime_counts(self) -> dict[str, int]:
        """What the simulation of this export adds: integer-chain points located (and not
        located) in the quantized model, layers with int32 biases."""
        return {"runtime_points": len(self.runtime_points),
                "unmatched_points": len(self.runtime_unmatched),
                "int32_bias_layers": len(self.int32_bias_layers)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Examples of the first calibration batch used to locate the runtime points.
RUNTIME_MATCH_EXAMPLES = 4


def as_model_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs: a tensor, or a tuple / list of tensors."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ExportError("example_inputs must be a tensor or a tuple of tensors")


def split_batch(batch: Any, n_inputs: int) -> tuple[tuple[torch.Tensor, ...], Any]:
    """``(model inputs, labels or None)`` of one data batch of a model with ``n_inputs``
    inputs: a tensor; ``(inputs, labels)`` with ``inputs`` a tensor or a tuple of tensors; or
    a tuple of the ``n_inputs`` input tensors, optionally followed by the labels."""
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if not isinstance(batch, (tuple, list)) or not batch:
        raise ExportError(f"cannot read a data batch of type {type(batch).__name__}; give "
                          "tensors, (inputs, labels) or tuples of the model's inputs")
    if isinstance(batch[0], (tuple, list)):
        return as_model_inputs(batch[0]), (batch[1] if len(batch) > 1 else None)
    return as_model_inputs(batch[:n_inputs]), (batch[n_inputs] if len(batch) > n_inputs else None)


def _numpy_batches(data: Any, max_batches: int | None, n_inputs: int
                   ) -> list[tuple[np.ndarray, ...]]:
    from bitsmith.quantize import iter_batches

    return [tuple(_numpy(t) for t in args[:n_inputs])
            for args in iter_batches(data, max_batches, multi_input=n_inputs > 1)]


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float tensors as float32, integer ones (token ids) keep their dtype."""
    arr = t.detach().cpu().numpy()
    return arr.astype(np.float32) if t.is_floating_point() else arr


def matmul_layers(qmodel: nn.Module) -> list[str]:
    """Linear layers that torch exports as ``MatMul`` with a renamed, transposed weight: those
    on inputs that are not 2-D, those without bias (``Gemm`` needs one) and block-wise ones
    (``MatMulNBits`` replaces a ``MatMul``); exported as
    :class:`~bitsmith.export.float_graph.MatMulLinear`."""
    table = quant_info(qmodel).layer_table

    def block_wise(name: str) -> bool:
        wq = getattr(qmodel.get_submodule(name), "weight_quantizer", None)
        return wq is not None and wq.block_size is not None

    return [info.name for info in table if info.type == "Linear" and (
        len(info.input_shape) != 2 or qmodel.get_submodule(info.name).bias is None
        or block_wise(info.name))]


def _control_flow_note(qmodel: nn.Module, tracer_notes: list[str]) -> str | None:
    """The warning for a model torch.fx could not trace (its ONNX graph is one traced run).

    A traced model's graph has no data-dependent Python control flow (fx refuses it); the
    exporter's own notes there come from shape checks inside leaf modules and are ignored.
    """
    report = quant_info(qmodel).report
    if report.traced:
        return None
    failure = report.trace_failure
    where = (f" at {failure.location}: `{failure.code}`"
             if failure is not None and failure.location else "")
    seen = f" (the exporter also noted: {tracer_notes[0]})" if tracer_notes else ""
    return (f"the ONNX graph is specialised to the control flow example_inputs took: torch.fx "
            f"could not trace {report.model}{where}, so the export recorded one run{seen}. "
            "Inputs that would take another branch still compute the recorded branch in ONNX "
            "Runtime. Make forward() free of data-dependent Python control flow, or check "
            "agreement with compare_onnx on representative data.")


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def layer_plans(qmodel: nn.Module) -> dict[str, LayerPlan]:
    """How each quantized layer of ``qmodel`` maps onto ONNX (ExportError if one cannot)."""
    from bitsmith.graph import quantized_layers

    plans = {}
    with torch.no_grad():
        for name, layer in quantized_layers(qmodel).items():
            act = None if layer.input_quantizer is None else act_qparams(
                f"{name}.input", layer.input_quantizer)
            wq = layer.weight_quantizer
            if wq is not None and wq.spec.bits > 8:
                raise ExportError(f"{name}.weight: {wq.spec.bits}-bit weights do not fit int8")
            plans[name] = LayerPlan(name, weight_qparams(layer), act, nbits_weight(layer))
    return plans


def export_onnx(qmodel: nn.Module, path: str | Path, example_inputs: Any, *,
                calibration: Any = None, integer_outputs: bool = True,
                integer_residuals: bool = True, observer: str = "mse", opset: int = 17,
                calibration_batches: int | None = 8, check_kernels: bool = True,
                nbits_accuracy_level: int = 0, runtime_model: bool = True) -> OnnxExportReport:
    """Export a quantized model as ONNX with QuantizeLinear/DequantizeLinear for ONNX Runtime.

    Args:
        qmodel: a model from :func:`bitsmith.quantize` (calibrated).
        path: the ``.onnx`` file to write.
        example_inputs: a tensor or tuple of tensors (batch first; the batch is dynamic).
        calibration: data (loader, tensor or iterable of batches) for the extra
            quantization points ONNX Runtime needs between integer kernels (layer outputs
            before a residual ``Add``, pooling inputs). Defaults to ``example_inputs``.
        integer_outputs: add those extra points (fast integer chains, small deviation from
            the simulation); ``False`` exports only the simulation's own points (the ONNX
            model then computes exactly what the simulation computes, up to float rounding,
            but most layers run as float ops).
        integer_residuals: with ``integer_outputs``, also run residual ``Add``, ``Concat``
            and pooling in int8 (their inputs and outputs quantized, the shortcut included,
            as ``quantize_static`` does); ``False`` keeps them in float and quantizes only
            layer outputs (closer to the simulation, a little slower).
        observer: bitsmith observer for the extra points' ranges: ``mse`` (default; the
            lowest deviation from the simulation in ``benchmarks/export_resnet20.py``),
            ``minmax`` (ONNX Runtime's own default), ``percentile`` or ``entropy``.
        opset: ONNX opset (>= 13 for per-channel DequantizeLinear).
        calibration_batches: at most this many calibration batches are used.
        nbits_accuracy_level: ``accuracy_level`` of ``MatMulNBits`` (block-wise weights of
            2, 4 or 8 bits on Linear layers): 0 multiplies in float32 (the simulation's
            arithmetic), 4 lets ONNX Runtime quantize the layer input to int8 per block
            (faster on VNNI CPUs, a further small deviation); see ``docs/export.md``.
        check_kernels: let ONNX Runtime optimise the written model and report the kernel
            each layer really runs (a second graph optimisation; seconds on large models).
        runtime_model: locate the integer-chain points in ``qmodel`` for
            :func:`~bitsmith.export.runtime_simulation` (one float run of each model on
            four calibration examples; ~10% of the export time on ResNet-20). ``False``
            leaves ``runtime_points`` empty (the tuner's runtime backend, which only times
            the export).

    Warns:
        ExportWarning: the graph is specialised to the example's control flow (the model
            could not be traced with torch.fx, or the exporter saw data-dependent values).

    Returns:
        An :class:`OnnxExportReport` (kernel per layer, calibrated points, notes, and the
        points and int32 biases :func:`~bitsmith.export.runtime_simulation` models).

    Raises:
        ExportError: the model is not quantized, or a layer's quantizer has no ONNX form
            (data-driven or per-channel activations, activations above 8 bits, ...).
    """
    if opset < 13:
        raise ExportError("per-channel DequantizeLinear needs opset >= 13")
    _quant_info(qmodel)
    inputs = as_model_inputs(example_inputs)
    was_training = qmodel.training
    qmodel.eval()
    try:
        plans = layer_plans(qmodel)
        float_model, _ = dequantized_copy(qmodel, matmul_layers(qmodel))
    finally:
        qmodel.train(was_training)
    tracer_notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_float_onnx(float_model, Path(tmp) / "float.onnx", inputs, opset,
                                       tracer_notes=tracer_notes)
        base = onnx.load(str(float_path))
    absent = absent_layers(base, plans)
    for name in absent:  # nothing to quantize: the exporter dropped the layer
        del plans[name]
    data = calibration if calibration is not None else [inputs]
    batches = (_numpy_batches(data, calibration_batches, len(inputs)) if integer_outputs
               else [])

    def ranges(sim: onnx.ModelProto, names: list[str]) -> dict[str, tuple[float, float]]:
        return tensor_ranges(add_outputs(sim, names).SerializeToString(), names, batches,
                             observer=observer)

    result = insert_qdq(base, plans, integer_outputs=integer_outputs, range_fn=ranges,
                        int_ops=INT_OPS if integer_residuals else frozenset(),
                        accuracy_level=nbits_accuracy_level)
    points: list[RuntimePoint] = []
    unmatched: list[str] = []
    if runtime_model and result.runtime_reads:
        points, unmatched = locate_runtime_points(
            float_model, base, result.runtime_reads,
            [x[:RUNTIME_MATCH_EXAMPLES] for x in (batches[0] if batches else map(_numpy, inputs))])
    model = result.model
    model.producer_name = "bitsmith"
    onnx.checker.check_model(model)
    out = Path(path)
    with atomic_path(out) as part:
        onnx.save(model, str(part))
    report = OnnxExportReport(
        path=str(out), file_bytes=out.stat().st_size, opset=opset,
        integer_outputs=integer_outputs, integer_residuals=integer_residuals,
        intended={n: p.kernel for n, p in plans.items()},
        calibrated_points=sorted(result.calibrated), absent_layers=absent,
        runtime_points=points, runtime_unmatched=unmatched,
        int32_bias_layers=[n for n, p in plans.items() if p.int32_bias])
    _count_kernels(report, quant_info(qmodel).layer_table.names, plans,
                   out if check_kernels else None)
    if absent:
        report.notes.append(
            f"{len(absent)} quantized layers are not in the ONNX graph: their outputs reach no "
            f"model output, so the exporter removed them: {absent}")
    note = _control_flow_note(qmodel, tracer_notes)
    if note is not None:
        warnings.warn(note, ExportWarning, stacklevel=2)
        report.notes.append(note)
    full_range = [n for n, p in plans.items() if p.integer and p.weight is not None
                  and p.weight.q.dtype == np.int8
                  and max(abs(p.weight.lattice[0]), p.weight.lattice[1]) > 63]
    if full_range and not _cpu_has_vnni():
        note = (f"{len(full_range)} layers use the full int8 weight range; AVX2 u8s8 kernels "
                "(vpmaddubsw) can saturate: quantize weights with reduced_range=True")
        warnings.warn(note, stacklevel=2)
        report.notes.append(note)
    if calibration is None and integer_outputs and result.calibrated:
        report.notes.append("extra quantization points were calibrated on example_inputs only; "
                            "pass calibration= for representative ranges")
    return report


def _count_kernels(report: OnnxExportReport, names: list[str], plans: dict[str, LayerPlan],
                   path: Path | None) -> None:
    """Fill the kernel of every layer of the LayerTable (``names``) and the counts from ONNX
    Runtime's optimised graph (or, without ``path``, from the export's intent)."""
    from bitsmith.export.kernels import ABSENT, kernel_class

    absent = set(report.absent_layers)
    present = [n for n in names if n not in absent]
    if path is None:
        report.layers = {n: (plans[n].op if n in plans else "float") for n in present}
        report.kernels = {}
    else:
        kernels = runtime_kernels(path, {n: plans[n].node if n in plans else "" for n in present})
        report.layers = kernels.layers
        report.kernels = kernels.compute
    report.layers = {n: ABSENT if n in absent else report.layers[n] for n in names}
    classes = [kernel_class(op) for op in report.layers.values()]
    report.integer_layers = classes.count("integer")
    report.weight_only_layers = classes.count("weight_only")
    report.float_layers = (len(classes) - report.integer_layers - report.weight_only_layers
                           - classes.count("absent"))
    lost = [n for n, p in plans.items()
            if p.integer and kernel_class(report.layers[n]) != "integer"]
    if lost:
        report.notes.append(f"{len(lost)} layers exported for integer kernels run as float in "
                            f"ONNX Runtime's optimised graph: {lost}")


def export_fp32_onnx(model: nn.Module, path: str | Path, example_inputs: Any,
                     opset: int = 17, fold_bn: bool = True) -> Path:
    """The FP32 baseline: the float model (BN folded, as bitsmith deploys it) as ONNX."""
    from bitsmith.quantize import prepare

    inputs = as_model_inputs(example_inputs)
    float_model, _, _ = prepare(model, inputs, fold_bn=fold_bn)
    return export_float_onnx(float_model, path, inputs, opset)


@dataclass(frozen=True)
class Agreement:
    """ONNX Runtime vs the PyTorch simulation on the same inputs.

    ``count`` argmax decisions (one per example, or per token for ``(batch, seq, vocab)``
    logits); ``top1_agreement`` in percent of them that match; logit errors are absolute;
    accuracies (percent) when labels were given.
    """

    count: int
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float
    onnx_accuracy: float | None = None
    torch_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    """Running sums of one reference's :class:`Agreement`."""

    agree: int = 0
    count: int = 0
    correct_o: int = 0
    correct_t: int = 0
    labelled: int = 0
    max_err: float = 0.0
    sum_err: float = 0.0
    n_logits: int = 0

    def add(self, out: torch.Tensor, ref: torch.Tensor, y: Any) -> None:
        err = (out - ref).abs()
        self.max_err = max(self.max_err, float(err.max()))
        self.sum_err += float(err.sum())
        self.n_logits += err.numel()
        self.agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        self.count += ref.argmax(-1).numel()
        if y is not None:
            self.correct_o += int((out.argmax(-1) == y).sum())
            self.correct_t += int((ref.argmax(-1) == y).sum())
            self.labelled += y.numel()

    def result(self) -> Agreement:
        if self.count == 0:
            raise ValueError("comparison data is empty")
        acc = (lambda c: 100.0 * c / self.labelled if self.labelled else None)  # noqa: E731
        return Agreement(self.count, 100.0 * self.agree / self.count, self.max_err,
                         self.sum_err / max(self.n_logits, 1), acc(self.correct_o),
                         acc(self.correct_t))


@torch.no_grad()
def compare_onnx_references(onnx_path: str | Path, references: dict[str, Any], data: Any,
                            threads: int = 2, max_batches: int | None = None,
                            optimize: bool = True) -> dict[str, Agreement]:
    """ONNX Runtime's session against several references in one pass over ``data``
    (batches: see :func:`split_batch`): ``name -> Agreement`` (its ``torch_accuracy`` is the
    reference's). ``optimize=False`` runs the session with its graph optimisations off.

    A reference is a PyTorch model (run in eval mode) or ``"unoptimised"``: the same graph
    in ONNX Runtime with its graph optimisations off (float ops between the same Q/DQ pairs;
    see :func:`compare_onnx_optimisation`).
    """
    session = make_session(onnx_path, threads, optimize=optimize)
    calls: dict[str, Callable[..., torch.Tensor]] = {}
    for name, ref in references.items():
        if isinstance(ref, str):
            if ref != "unoptimised":
                raise ValueError(f"reference {name!r}: unknown {ref!r}; give a model or "
                                 "'unoptimised'")
            calls[name] = _session_call(make_session(onnx_path, threads, optimize=False))
        else:
            calls[name] = ref
    models = [m for m in calls.values() if isinstance(m, nn.Module)]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    tallies = {name: _Tally() for name in calls}
    n_inputs = len(session.get_inputs())
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            xs, y = split_batch(batch, n_inputs)
            out = _session_call(session)(*xs).float()
            for name, call in calls.items():
                tallies[name].add(out, call(*xs).float(), y)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return {name: t.result() for name, t in tallies.items()}


def _session_call(session: Any) -> Callable[..., torch.Tensor]:
    """``f(*inputs) -> first output`` of an ONNX Runtime session, as a tensor."""

    def call(*xs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(session, [_numpy(x) for x in xs])[0])

    return call


def compare_onnx(qmodel: nn.Module, onnx_path: str | Path, data: Any, threads: int = 2,
                 max_batches: int | None = None, optimize: bool = True) -> Agreement:
    """Run ``data`` through both and compare (batches: see :func:`split_batch`).

    ``optimize=False`` runs ONNX Runtime with its graph optimisations off (float ops between
    the Q/DQ pairs instead of integer kernels)."""
    return compare_onnx_references(onnx_path, {"model": qmodel}, data, threads, max_batches,
                                   optimize)["model"]


def compare_onnx_optimisation(onnx_path: str | Path, data: Any, threads: int = 2,
                              max_batches: int | None = None) -> Agreement:
    """ONNX Runtime's optimised session (integer kernels, fused ops) vs its unoptimised one
    (the reference: float ops between the same Q/DQ pairs) on the same graph.

    Both compute with the same quantization grids and differ only in float rounding
    (summation order, fused kernels); a value next to a rounding boundary lands on
    different sides, and in a deep model such differences compound. Their top-1 agreement
    is the reference for any simulation's agreement with ONNX Runtime on ``data``: how much
    float rounding alone changes (not a strict bound: a simulation rounds differently again
    and can land closer to the optimised session).
    """
    return compare_onnx_references(onnx_path, {"itself": "unoptimised"}, data, threads,
                                   max_batches)["itself"]
