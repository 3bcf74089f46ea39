"""QDQ placement on a float ONNX graph so that ONNX Runtime runs integer kernels.

Input: the float graph of :mod:`bitsmith.export.float_graph` (initializer
``<layer>.weight`` feeds the layer's Conv/Gemm node) and, per quantized layer,
its integer weight (:class:`WeightQParams`) and input grid (:class:`ActQParams`).

Three kinds of rewrite:

1. **Simulation points** (exact): each quantized layer's input goes through
   ``QuantizeLinear → DequantizeLinear`` with the layer's own calibrated
   scale and zero point (a ``Clip`` first where the bitsmith grid is narrower
   than uint8), its weight initializer is replaced by int8 codes +
   ``DequantizeLinear`` (per-channel axis), and its bias by int32 codes at scale
   ``s_in · s_w`` (what ``QLinearConv`` takes).
2. **Integer chains** (``integer_outputs=True``, the default): ONNX Runtime
   fuses ``DQ → Conv → Q`` into ``QLinearConv`` only if the output is
   quantized, and runs ``Add`` / pooling in int8 only between Q/DQ pairs. The
   pass therefore also quantizes the outputs of integer layers, of ``Add`` /
   ``Mul`` / ``Concat`` / pooling nodes whose inputs are all quantized, and
   passes grids through data-movement ops, as ``quantize_static`` does. Where
   such an output reaches a simulation point through ``Relu``/``Clip``/data
   movement only, that point's grid is reused (exact: ``Relu`` is absorbed by a
   zero point at ``qmin``); otherwise the tensor gets a **calibrated** uint8
   grid (calibrated on data run through the simulation-point graph, and narrowed to
   the active range of a saturating activation that reads it:
   :mod:`bitsmith.export.saturation`).
   These points, and the reads of a simulation point's tensor on its grid by a
   non-layer consumer (a residual ``Add`` reading a block input), are where the export
   deviates from the PyTorch simulation besides the int32 biases and float rounding;
   :class:`RuntimeRead` records each, and :mod:`bitsmith.export.runtime_sim` puts them
   into a simulation of the export. The export report measures the deviation.
3. Layers the Policy keeps in float, and layers whose weights have no exact
   8-bit integer form (resq, μL2Q, ZoomQ, power-of-two above 4 bits), keep a
   float Conv/Gemm (with the quantized weight values) fed by the input's QDQ.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitsmith.export.errors import ExportError
from bitsmith.export.qparams import (
    ActQParams,
    NBitsWeight,
    WeightQParams,
    calibrated_qparams,
    int32_bias,
)
from bitsmith.export.saturation import narrow_ranges

#: Nodes ONNX Runtime runs on int8 tensors when all their inputs and the output are QDQ'd.
INT_OPS = frozenset({"Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool"})
#: Nodes through which a grid passes unchanged (quantize-then-move == move-then-quantize).
MOVE_OPS = frozenset({"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                      "Slice", "Pad", "Identity", "Gather", "Split"})
#: Activations absorbed by a following QuantizeLinear whose range starts at 0.
ACT_OPS = frozenset({"Relu", "Clip"})
LAYER_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})


@dataclass
class LayerPlan:
    """How one quantized layer is exported."""

    name: str
    weight: WeightQParams | None
    act: ActQParams | None
    nbits: NBitsWeight | None = None  # block-wise weight for MatMulNBits (weight is None)
    node: str = ""
    node_op: str = ""
    kernel: str = ""
    int32_bias: bool = False  # the export rounded its bias to int32 codes at s_in * s_w

    @property
    def integer(self) -> bool:
        return self.weight is not None and self.act is not None

    @property
    def op(self) -> str:
        """The ONNX Runtime kernel the export intends (the optimised graph decides)."""
        if self.nbits is not None:
            return "MatMulNBits"
        if not self.integer:
            return self.node_op
        return {"Conv": "QLinearConv", "Gemm": "QGemm", "MatMul": "MatMulIntegerToFloat",
                "ConvTranspose": "ConvTranspose"}.get(self.node_op, self.node_op)


@dataclass
class RuntimeRead:
    """A tensor some consumers read quantized in the export but not in the simulation.

    ``readers`` / ``raw_readers``: op types of the consumers that read ``DQ(Q(tensor))`` /
    the float tensor (layers read it raw and quantize it on their own input grid).
    """

    tensor: str
    grid: ActQParams
    readers: list[str] = field(default_factory=list)
    raw_readers: list[str] = field(default_factory=list)


@dataclass
class QdqResult:
    """The rewritten model and what was done.

    ``runtime_reads``: every quantized read the simulation does not have (integer chains),
    by tensor name of the input graph.
    """

    model: onnx.ModelProto
    layers: dict[str, LayerPlan]
    calibrated: dict[str, ActQParams] = field(default_factory=dict)
    runtime_reads: dict[str, RuntimeRead] = field(default_factory=dict)


class _Graph:
    """Producer/consumer index of a GraphProto."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in graph.node:
            for o in node.output:
                self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, i))

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Non-empty inputs that are not initializers or Constant outputs."""
        out = []
        for name in node.input:
            if not name or name in self.inits:
                continue
            prod = self.producer.get(name)
            if prod is not None and prod.op_type == "Constant":
                continue
            out.append(name)
        return out


def _layer_nodes(g: _Graph, plans: dict[str, LayerPlan]) -> dict[str, onnx.NodeProto]:
    found: dict[str, onnx.NodeProto] = {}
    for name in plans:
        users = [n for n, idx in g.consumers.get(f"{name}.weight", [])
                 if idx == 1 and n.op_type in LAYER_OPS]
        if len(users) != 1:
            raise ExportError(
                f"{name}: its weight initializer {name}.weight does not feed exactly one "
                "Conv/Gemm/MatMul node in the exported graph (shared or transformed weight); "
                "keep this layer in float in the Policy")
        found[name] = users[0]
    return found


def absent_layers(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Layers of ``names`` whose weight initializer the exported graph does not use at all:
    the exporter removed them because their output reaches no model output."""
    used = {i for node in model.graph.node for i in node.input}
    for node in model.graph.node:  # the exporter's Identity(initializer) de-duplication
        if node.op_type == "Identity":
            used.add(node.output[0])
    return [n for n in names if f"{n}.weight" not in used]


def _node_names(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


@dataclass
class _Points:
    """Where Q/DQ go.

    ``edges``: simulation grids per (node name, input index); ``points``: the grid of every
    quantized tensor; ``readers``: nodes that read the dequantized version of quantized
    inputs; ``wanted``: tensors still lacking a calibrated range; ``own``: integer-layer
    outputs quantized for the runtime (read dequantized by any non-layer consumer).
    """

    edges: dict[tuple[str, int], ActQParams]
    points: dict[str, ActQParams]
    readers: set[str]
    wanted: set[str]
    own: set[str]
    int_layers: set[str] = field(default_factory=set)


def plan_points(  # noqa: C901 - one case per ONNX op kind (named in pyproject.toml)
        g: _Graph, plans: dict[str, LayerPlan], nodes: dict[str, onnx.NodeProto],
        integer_outputs: bool, ranges: dict[str, tuple[float, float]] | None,
        int_ops: frozenset[str] = INT_OPS) -> _Points:
    """Decide the Q/DQ points (see :class:`_Points`).

    ``int_ops`` are the non-layer ops run in int8 when all their inputs are quantized;
    empty keeps residual adds and pooling in float (only layer outputs get extra points).
    """
    edges: dict[tuple[str, int], ActQParams] = {}
    points: dict[str, ActQParams] = {}
    int_layers: set[str] = set()
    readers: set[str] = set()
    for name, plan in plans.items():
        node = nodes[name]
        if plan.act is not None:
            edges[(node.name, 0)] = plan.act
            points.setdefault(node.input[0], plan.act)
        if plan.integer:
            readers.add(node.name)
            # MatMul layers keep a float output (MatMulIntegerToFloat, bias added in float:
            # exactly the simulation); Conv/Gemm need a quantized output to fuse.
            if node.op_type != "MatMul":
                int_layers.add(node.name)
    readers |= int_layers
    wanted: set[str] = set()
    own: set[str] = set()
    if not integer_outputs:
        return _Points(edges, points, readers, wanted, own, int_layers)

    def sole_consumer(t: str) -> onnx.NodeProto | None:
        users = g.consumers.get(t, [])
        return users[0][0] if len(users) == 1 and t not in g.outputs else None

    for node in g.graph.node:
        op = node.op_type
        acts = g.activation_inputs(node)
        if op in MOVE_OPS:
            if int_ops and acts and acts[0] in points:
                readers.add(node.name)
                points.setdefault(node.output[0], points[acts[0]])
            continue
        eligible = node.name in int_layers or (
            op in int_ops and acts and all(a in points for a in acts))
        if not eligible:
            continue
        readers.add(node.name)
        out = node.output[0]
        if out in g.outputs:
            continue
        chain, ops, t = [out], [], out
        while t not in points:
            nxt = sole_consumer(t)
            if nxt is None or nxt.op_type not in ACT_OPS | MOVE_OPS or nxt.output[0] in g.outputs:
                break
            ops.append(nxt)
            t = nxt.output[0]
            chain.append(t)
        if t in points:
            grid = points[t]
        elif ranges is not None and t in ranges:
            grid = calibrated_qparams(*ranges[t])
        else:  # placeholder until calibrated: later nodes still see a quantized input
            wanted.add(t)
            grid = ActQParams(1.0, 0, source="calibrated")
        for i, tensor in enumerate(chain):
            if i < len(ops) and ops[i].op_type in ACT_OPS:  # absorbed by the activation
                continue
            points.setdefault(tensor, grid)
            # read dequantized by whatever consumes it, also where the tensor already is
            # another layer's input point: a float reader (a residual Add whose other input
            # is float) would otherwise keep ONNX Runtime from fusing the layer
            if node.name in int_layers:
                own.add(tensor)
        for op_node in ops:
            if op_node.op_type in MOVE_OPS:
                readers.add(op_node.name)
    return _Points(edges, points, readers, wanted, own, int_layers)


class _Builder:
    """Accumulates new initializers and nodes; caches one Q/DQ pair per (tensor, grid)."""

    def __init__(self) -> None:
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self._qdq: dict[tuple, str] = {}
        self._count = 0

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def uid(self, stem: str) -> str:
        self._count += 1
        return f"{stem}__{self._count}"

    def qdq(self, tensor: str, grid: ActQParams, fusable: bool = False) -> str:
        """``tensor`` through Q/DQ on ``grid`` (a ``Clip`` first if the grid is narrower than
        uint8). ``fusable``: the producer is an integer layer, which ONNX Runtime fuses only
        with a ``Q`` right after it; a narrower grid then gets ``Q(full uint8) → DQ → Clip →
        Q → DQ`` (same values: the clip acts on values already on the grid)."""
        key = (tensor, grid.key())
        if key in self._qdq:
            return self._qdq[key]
        if fusable and grid.needs_clip:
            full = ActQParams(grid.scale, grid.zero_point, 0, 255, grid.source)
            self._qdq[key] = self.qdq(self.qdq(tensor, full), grid)
            return self._qdq[key]
        stem = self.uid(f"{tensor}_q")
        scale = self.init(f"{stem}.scale", np.array(grid.scale, dtype=np.float32))
        zp = self.init(f"{stem}.zero_point", np.array(grid.zero_point, dtype=np.uint8))
        src = tensor
        if grid.needs_clip:
            lo, hi = grid.clip_range
            lo_n = self.init(f"{stem}.clip_min", np.array(lo, dtype=np.float32))
            hi_n = self.init(f"{stem}.clip_max", np.array(hi, dtype=np.float32))
            src = f"{stem}.clipped"
            self.nodes.append(helper.make_node("Clip", [tensor, lo_n, hi_n], [src],
                                               name=f"{stem}/Clip"))
        self.nodes.append(helper.make_node("QuantizeLinear", [src, scale, zp], [f"{stem}.q"],
                                           name=f"{stem}/Q"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{stem}.q", scale, zp],
                                           [f"{stem}.dq"], name=f"{stem}/DQ"))
        self._qdq[key] = f"{stem}.dq"
        return f"{stem}.dq"

    def dequantize_init(self, stem: str, q: np.ndarray, scale: np.ndarray, zp: np.ndarray,
                        axis: int | None) -> str:
        self.init(f"{stem}.q", q)
        self.init(f"{stem}.scale", scale)
        self.init(f"{stem}.zero_point", zp)
        attrs: dict[str, Any] = {} if axis is None or scale.ndim == 0 else {"axis": axis}
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [f"{stem}.q", f"{stem}.scale", f"{stem}.zero_point"],
            [f"{stem}.dq"], name=f"{stem}/DQ", **attrs))
        return f"{stem}.dq"


def _rewrite_nbits(b: _Builder, node: onnx.NodeProto, plan: LayerPlan,
                   accuracy_level: int) -> set[str]:
    """``MatMul(x, W^T)`` -> ``MatMulNBits(x, packed W, scales[, zero points])``."""
    nb = plan.nbits
    if nb is None:
        raise ExportError(f"{plan.name}: no MatMulNBits weight to write")
    stem = f"{plan.name}.weight"
    inputs = [node.input[0], b.init(f"{stem}.q", nb.packed), b.init(f"{stem}.scale", nb.scales)]
    if nb.zero_points is not None:
        inputs.append(b.init(f"{stem}.zero_point", nb.zero_points))
    replacement = helper.make_node(
        "MatMulNBits", inputs, list(node.output), name=node.name, domain="com.microsoft",
        K=nb.k, N=nb.n, bits=nb.bits, block_size=nb.block, accuracy_level=accuracy_level)
    node.CopyFrom(replacement)
    return {stem}


def _rewrite_layer(b: _Builder, g: _Graph, node: onnx.NodeProto, plan: LayerPlan,
                   accuracy_level: int = 0) -> set[str]:
    """Replace the weight (and bias) initializer of an integer layer; returns dropped inits."""
    if plan.nbits is not None:
        return _rewrite_nbits(b, node, plan, accuracy_level)
    dropped: set[str] = set()
    w = plan.weight
    if w is None:
        return dropped
    axis, q = w.axis, w.q
    if node.op_type == "Gemm" and axis is not None:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    if node.op_type == "MatMul":  # MatMulLinear: the initializer is W^T, (in, out)
        q = np.ascontiguousarray(q.T)
        axis = None if axis is None else 1
    node.input[1] = b.dequantize_init(f"{plan.name}.weight", q, w.scale, w.zero_point, axis)
    dropped.add(f"{plan.name}.weight")
    if plan.act is not None and len(node.input) > 2 and node.input[2] in g.inits:
        bias_name = node.input[2]
        bias = next(numpy_helper.to_array(t) for t in g.graph.initializer if t.name == bias_name)
        codes, bias_scale = int32_bias(bias, plan.act, w)
        node.input[2] = b.dequantize_init(f"{plan.name}.bias", codes, bias_scale,
                                          np.zeros(bias.shape, np.int32), 0)
        plan.int32_bias = True
        dropped.add(bias_name)
    return dropped


def _toposort(nodes: list[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"internal error: cycle or missing input near {rest[0].name}")
        pending = rest
    return ordered


def insert_qdq(model: onnx.ModelProto, plans: dict[str, LayerPlan], *, integer_outputs: bool,
               range_fn: Callable[[onnx.ModelProto, list[str]], dict[str, tuple[float, float]]]
               | None = None, int_ops: frozenset[str] = INT_OPS,
               accuracy_level: int = 0) -> QdqResult:
    """Rewrite ``model`` (a copy) with Q/DQ as described in the module docstring.

    ``range_fn(sim_model, tensor_names) -> {name: (min, max)}`` calibrates the extra points;
    it gets the graph with only the simulation points. Required when ``integer_outputs``.
    ``accuracy_level``: of the ``MatMulNBits`` nodes (block-wise weights; 0 computes in
    float, 4 lets ONNX Runtime quantize their input to int8 per block).
    """
    if integer_outputs:
        sim = insert_qdq(model, plans, integer_outputs=False, int_ops=int_ops,
                         accuracy_level=accuracy_level).model
        g = _Graph(_copy_named(model).graph)
        nodes = _layer_nodes(g, plans)
        wanted = plan_points(g, plans, nodes, True, None, int_ops).wanted
        ranges: dict[str, tuple[float, float]] = {}
        if wanted:
            if range_fn is None:
                raise ExportError("integer_outputs=True needs calibration data for the extra "
                                  "quantization points")
            ranges = narrow_ranges(range_fn(sim, sorted(wanted)), g.consumers, g.outputs)
        return _apply(model, plans, True, ranges, int_ops, accuracy_level)
    return _apply(model, plans, False, None, int_ops, accuracy_level)


def _copy_named(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _materialize_identities(out.graph)
    _node_names(out)
    return out


def _materialize_identities(graph: onnx.GraphProto) -> None:
    """Replace ``Identity(initializer)`` (the exporter's de-duplication of equal tensors)
    by a copy of the initializer under the Identity's output name."""
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _apply(model: onnx.ModelProto, plans: dict[str, LayerPlan], integer_outputs: bool,
           ranges: dict[str, tuple[float, float]] | None, int_ops: frozenset[str],
           accuracy_level: int = 0) -> QdqResult:
    model = _copy_named(model)
    g = _Graph(model.graph)
    nodes = _layer_nodes(g, plans)
    pts = plan_points(g, plans, nodes, integer_outputs, ranges, int_ops)
    edges, points, readers = pts.edges, pts.points, pts.readers
    if pts.wanted:
        raise ExportError(f"no calibrated range for {sorted(pts.wanted)[:3]}")
    b = _Builder()
    dropped: set[str] = set()
    for name, plan in plans.items():
        plan.node = nodes[name].name
        plan.node_op = nodes[name].op_type
        dropped |= _rewrite_layer(b, g, nodes[name], plan, accuracy_level)
        plan.kernel = _kernel(plan)
    reads: dict[str, RuntimeRead] = {}
    for node in list(model.graph.node):
        for idx, tensor in enumerate(node.input):
            if not tensor:
                continue
            grid = edges.get((node.name, idx))
            if grid is None and tensor in points and tensor not in g.inits:
                if node.name in readers and (node.op_type in int_ops
                                             or (node.op_type in MOVE_OPS and idx == 0)):
                    grid = points[tensor]
                elif tensor in pts.own and node.op_type not in LAYER_OPS:
                    grid = points[tensor]
                read = reads.setdefault(tensor, RuntimeRead(tensor, points[tensor]))
                (read.readers if grid is not None else read.raw_readers).append(node.op_type)
            if grid is not None:
                producer = g.producer.get(tensor)
                node.input[idx] = b.qdq(tensor, grid, fusable=producer is not None
                                        and producer.name in pts.int_layers)
    used = {i for n in list(model.graph.node) + b.nodes for i in n.input}
    kept = [t for t in model.graph.initializer if t.name not in dropped or t.name in used]
    kept = [t for t in kept if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + b.inits)
    available = [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]
    ordered = _toposort(list(model.graph.node) + b.nodes, available)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    _pads_in_integer_domain(model.graph)
    if any(p.nbits is not None for p in plans.values()) and not any(
            o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    calibrated = {t: p for t, p in points.items() if p.source == "calibrated"}
    return QdqResult(model, plans, calibrated, {t: r for t, r in reads.items() if r.readers})


def _pads_in_integer_domain(graph: onnx.GraphProto) -> None:
    """``DQ(a) → Pad(0) → Q`` with one grid becomes ``Pad(a, zero_point)`` (exact).

    ONNX Runtime drops Q/DQ around Slice or Reshape itself but not around Pad; padding the
    uint8 tensor with its zero point (the code of 0.0) removes two nodes per Pad.
    """
    g = _Graph(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    remove: set[str] = set()
    for pad in list(graph.node):
        if pad.op_type != "Pad" or any(a.name == "mode" and a.s not in (b"constant", b"")
                                       for a in pad.attribute):
            continue
        dq = g.producer.get(pad.input[0])
        users = g.consumers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1:
            continue
        q = users[0][0]
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or len(dq.input) < 3:
            continue
        value = inits.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        same = all(n in inits for n in (*dq.input[1:3], *q.input[1:3])) and np.array_equal(
            inits[dq.input[1]], inits[q.input[1]]) and np.array_equal(
            inits[dq.input[2]], inits[q.input[2]])
        if not same or value is None or np.any(np.asarray(value) != 0.0) \
                or np.asarray(inits[q.input[2]]).size != 1:
            continue
        pad.input[0] = dq.input[0]
        if len(pad.input) > 2:
            pad.input[2] = q.input[2]
        else:
            pad.input.append(q.input[2])
        pad.output[0] = q.output[0]
        remove.add(q.name)
        if len(g.consumers.get(dq.output[0], [])) == 1:
            remove.add(dq.name)
    if remove:
        keep = [n for n in graph.node if n.name not in remove]
        del graph.node[:]
        graph.node.extend(keep)


def _kernel(plan: LayerPlan) -> str:
    if plan.nbits is not None:
        nb = plan.nbits
        return (f"MatMulNBits ({nb.bits}-bit weights, blocks of {nb.block}, float "
                "activations)")
    if plan.integer and plan.weight is not None:
        w = plan.weight
        return f"int8 (weights {w.bits}-bit grid in {w.q.dtype}, activations uint8)"
    if plan.act is not None:
        return "float op on quantized input (weights have no exact 8-bit integer form)"
    if plan.weight is not None:
        return "float op, int8 weights dequantized (no input quantizer)"
    return "float"


def add_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (float, any shape)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out
