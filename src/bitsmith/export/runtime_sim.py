"""The PyTorch simulation of what ONNX Runtime runs: the simulation plus the integer chains.

The integer-chain export (:mod:`bitsmith.export.onnx_qdq`) quantizes tensors the
simulation keeps in float: layer outputs before a residual ``Add`` or ``Concat``, the
outputs of ``Add`` / ``Concat`` / pooling, and the shortcut read of a tensor that is also a
layer's input. Each is a :class:`~bitsmith.export.onnx_qdq.RuntimeRead` on a fixed uint8
grid. :func:`locate_runtime_points` finds the torch.fx node of each such ONNX tensor by
value (on the float model with the quantized weights and its ONNX graph, which the Q/DQ
pass rewrote: the node whose output equals the tensor on one batch is its twin), and
:func:`runtime_simulation` returns a copy of the quantized model with a
:class:`RuntimeQuantize` after each of those nodes, read by the same consumers that read
the quantized tensor in ONNX (every consumer but the quantized layers, which quantize
their input on their own grid), and with the integer kernels' biases rounded to int32 as
the export writes them. Its outputs are what ONNX Runtime computes up to float rounding and
the integer kernels' own arithmetic (``benchmarks/results/export_agreement.md``: 99.84% top-1
agreement on the pretrained ResNet-20, against 98.70% for the simulation); scoring it scores
the deployed model.

Not modelled (reported in ``OnnxExportReport.runtime_unmatched``): points inside modules
torch.fx keeps as leaves (attention), models torch.fx could not trace, and tensors with
no twin of the same shape (e.g. a reshape the exporter merged with another op).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import fx, nn

from bitsmith.export.errors import ExportError
from bitsmith.export.onnx_qdq import LAYER_OPS, MOVE_OPS, RuntimeRead, add_outputs
from bitsmith.export.ort import make_session, run
from bitsmith.export.qparams import ActQParams, act_qparams, int32_bias, weight_qparams
from bitsmith.graph import quantized_layers

if TYPE_CHECKING:
    from bitsmith.export.onnx_export import OnnxExportReport

#: Largest relative L2 difference between an ONNX tensor and its fx twin (float rounding of
#: two runtimes, on the float pair; other tensors of the same shape differ by 50-140%).
MATCH_TOLERANCE = 0.05
#: A twin must be this many times closer than any other candidate with different values.
MATCH_MARGIN = 3.0


class RuntimeQuantize(nn.Module):
    """Fake quantization on one fixed grid, as ``DequantizeLinear(QuantizeLinear(x))``:
    ``scale · (clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point)`` (any shape,
    rounding half to even like ONNX)."""

    scale: torch.Tensor

    def __init__(self, grid: ActQParams) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(grid.scale, dtype=torch.float32))
        self.zero_point, self.qmin, self.qmax = grid.zero_point, grid.qmin, grid.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point) * self.scale).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"scale={float(self.scale):.6g}, zero_point={self.zero_point}, "
                f"range=[{self.qmin}, {self.qmax}]")


@dataclass
class RuntimePoint:
    """An ONNX tensor read quantized by the runtime, and its fx twin in the quantized model.

    ``match_error``: relative L2 difference between the two on the matching batch;
    ``raw_readers``: non-layer ONNX consumers that read the float tensor (the simulation then
    quantizes for them too: an approximation, listed).
    """

    tensor: str
    node: str
    grid: ActQParams
    match_error: float
    readers: list[str] = field(default_factory=list)
    raw_readers: list[str] = field(default_factory=list)


class _Capture(fx.Interpreter):
    """Runs a GraphModule and keeps every floating-point node output, grouped by shape."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.by_shape: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            # a copy: an in-place activation (ReLU(inplace=True)) overwrites the output later
            self.by_shape.setdefault(tuple(out.shape), []).append((n.name, out.detach().clone()))
        return out


def _twin(value: np.ndarray, captured: Sequence[tuple[str, torch.Tensor]]
          ) -> tuple[str, float] | None:
    """The captured output equal to ``value`` up to :data:`MATCH_TOLERANCE` (relative L2) and
    unambiguously closer than every other (:data:`MATCH_MARGIN`); the first in graph order
    among outputs with the same values (e.g. a tensor and its dropout in eval mode)."""
    ref = torch.from_numpy(np.asarray(value, dtype=np.float32))
    norm = max(float(ref.norm()), 1e-12)
    errors = [(name, float((out.float() - ref).norm()) / norm, out) for name, out in captured]
    if not errors:
        return None
    name, best, out = min(errors, key=lambda e: e[1])
    if best > MATCH_TOLERANCE:
        return None
    for _, err, other in errors:
        if err < MATCH_MARGIN * best and not torch.equal(other, out):
            return None  # two different tensors fit about equally well
    first = next(n for n, _, o in errors if torch.equal(o, out))
    return first, best


@torch.no_grad()
def locate_runtime_points(float_model: nn.Module, float_graph: onnx.ModelProto,
                          reads: dict[str, RuntimeRead], inputs: Sequence[np.ndarray]
                          ) -> tuple[list[RuntimePoint], list[str]]:
    """Find the fx node of each runtime read by value on one batch ``inputs``.

    The match runs on the float pair the export starts from (quantized weights, no
    activation quantization): without activation grids there are no rounding flips to
    compound with depth, so twins stay within float rounding of each other.

    Args:
        float_model: the quantized model's float copy (``dequantized_copy``), a
            ``torch.fx.GraphModule`` with the quantized model's node names when traced.
        float_graph: its ONNX export (the graph the Q/DQ pass rewrote).
        reads: the export's runtime reads (tensor name of ``float_graph`` -> read).
        inputs: one batch of positional model inputs (numpy, batch first).

    Returns:
        ``(points, unmatched)``: points in ONNX graph order; tensors without a twin.
    """
    names = list(reads)
    if not names:
        return [], []
    if not isinstance(float_model, fx.GraphModule):
        return [], names
    session = make_session(add_outputs(float_graph, names).SerializeToString(), optimize=False)
    values = dict(zip(names, run(session, inputs, names)))
    was_training = float_model.training
    float_model.eval()
    try:
        capture = _Capture(float_model)
        capture.run(*[torch.from_numpy(np.asarray(x)) for x in inputs])
    finally:
        float_model.train(was_training)
    points, unmatched, taken = [], [], set()
    for name in names:
        shape = tuple(np.asarray(values[name]).shape)
        candidates = [c for c in capture.by_shape.get(shape, []) if c[0] not in taken]
        twin = _twin(values[name], candidates)
        if twin is None:
            unmatched.append(name)
            continue
        taken.add(twin[0])
        read = reads[name]
        points.append(RuntimePoint(name, twin[0], read.grid, twin[1], list(read.readers),
                                   [op for op in read.raw_readers if op not in LAYER_OPS]))
    return points, _uncovered(unmatched, {p.tensor for p in points}, reads, float_graph)


def _uncovered(unmatched: list[str], located: set[str], reads: dict[str, RuntimeRead],
               model: onnx.ModelProto) -> list[str]:
    """The unmatched tensors whose values the located points do not already put on their grid.

    A data-movement op (Slice, Pad with 0, Reshape, ...) of a tensor on a grid gives a tensor
    on the same grid, so an intermediate the exporter split off (ResNet's strided shortcut
    ``x[:, :, ::2, ::2]`` becomes two Slices; the first has no fx twin) needs no point of its
    own when its source is on that grid.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    on_grid = set(located)
    left = list(unmatched)
    changed = True
    while changed:
        changed = False
        for name in list(left):
            node = producer.get(name)
            source = node.input[0] if node is not None and node.input else ""
            if node is not None and node.op_type in MOVE_OPS and source in on_grid \
                    and reads[source].grid.key() == reads[name].grid.key():
                on_grid.add(name)
                left.remove(name)
                changed = True
    return left


def runtime_simulation(qmodel: nn.Module, report: OnnxExportReport) -> nn.Module:
    """A copy of ``qmodel`` that computes what ONNX Runtime runs for ``report``'s export.

    Two differences from the simulation are added: the integer-chain points
    (``report.runtime_points``; each node is followed by a :class:`RuntimeQuantize` that every
    consumer except the model's layers reads) and the int32 biases of the integer kernels
    (``report.int32_bias_layers``: the bias rounded to ``s_in · s_w``, a constant shift of
    up to half an accumulator step per channel that moves values across the rounding
    boundaries of the next grid). ``qmodel`` itself is unchanged.

    Args:
        qmodel: the quantized model the export was made from.
        report: the :class:`~bitsmith.export.OnnxExportReport` of that export.

    Returns:
        The model ONNX Runtime runs, in PyTorch (outputs equal up to float rounding).

    Raises:
        ExportError: points are given but ``qmodel`` is not a traced GraphModule, or the
            report names a node or layer ``qmodel`` does not have (another model's export).
    """
    from bitsmith.quantize import quant_info

    work = with_int32_biases(qmodel, report.int32_bias_layers)
    if not report.runtime_points:
        return work
    if not isinstance(work, fx.GraphModule):
        raise ExportError("the runtime simulation needs a model torch.fx traced; this one "
                          "runs eagerly (see the conversion report)")
    layers = set(quant_info(work).layer_table.names)
    nodes = {n.name: n for n in work.graph.nodes}
    for i, point in enumerate(report.runtime_points):
        node = nodes.get(point.node)
        if node is None:
            raise ExportError(f"runtime point {point.tensor}: the model has no node "
                              f"{point.node!r}; the report comes from another model's export")
        users = [u for u in node.users if not (u.op == "call_module" and u.target in layers)]
        if not users:
            continue
        target = f"bitsmith_runtime_point_{i}"
        work.add_submodule(target, RuntimeQuantize(point.grid))
        with work.graph.inserting_after(node):
            quantized = work.graph.call_module(target, (node,))
        for user in users:
            user.replace_input_with(node, quantized)
    work.graph.lint()
    work.recompile()
    return work


@torch.no_grad()
def with_int32_biases(qmodel: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of ``qmodel`` whose named layers' biases hold their int32 form
    (:func:`~bitsmith.export.qparams.int32_bias`), as the integer kernels add them."""
    from bitsmith.quantize import quant_info

    info = quant_info(qmodel)
    work = copy.deepcopy(qmodel)
    info.attach(work)  # GraphModule's deepcopy keeps modules, not plain attributes
    layers = quantized_layers(work)
    for name in names:
        layer = layers.get(name)
        bias = getattr(layer, "bias", None)
        weight = None if layer is None else weight_qparams(layer)
        if layer is None or weight is None or layer.input_quantizer is None \
                or not isinstance(bias, torch.Tensor):
            raise ExportError(f"layer {name!r}: the model has no such quantized layer with an "
                              "integer weight, input grid and bias; the report comes from "
                              "another model's export")
        act = act_qparams(f"{name}.input", layer.input_quantizer)
        codes, scale = int32_bias(bias.detach().cpu().numpy(), act, weight)
        rounded = codes.astype(np.float32) * scale
        bias.copy_(torch.from_numpy(rounded).to(bias))
    return work
