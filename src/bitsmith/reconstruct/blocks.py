"""Reconstruction units on a traced model: single layers or detected blocks, and the pieces
that run the graph in between.

The traced (``torch.fx``) graph is cut into consecutive *pieces*, each a contiguous run
of nodes in execution order. A piece that contains a quantized layer to be learned is a
*unit*; the others are passive (pooling, reshapes, ...).

* **Layer-wise** (``adaround``): one unit per quantized layer; the unit also takes the
  element-wise activation that immediately follows the layer when it is the layer's
  only user (``conv → relu``), so the reconstruction loss is measured after the ReLU, as
  AIMET does.
* **Block-wise** (``brecq``, ``qdrop``): the graph is cut wherever exactly one value is
  live (every later node depends on the earlier ones only through it): the cut points of
  a single-entry single-exit region. Between two consecutive cuts lies one block: a
  residual block (its branch and its shortcut meet before the cut), a stem ``conv →
  relu``, or the head ``pool → flatten → linear``. A segment without a quantized layer
  joins the previous block when it is only an activation (the ReLU after a residual
  add belongs to its block) and the next block otherwise. In a plain chain every layer
  is its own block, so block-wise reconstruction there is layer-wise reconstruction.

Values crossing piece boundaries must be per-sample tensors (first dimension = batch),
because pieces run over the calibration set in chunks; a boundary that carries anything
else (an integer from ``x.size(0)``, a shape) is removed by merging the pieces around it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU, nn.SiLU,
                       nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.ELU, nn.PReLU)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.gelu,
                         F.silu, F.hardswish, torch.sigmoid, torch.tanh, F.elu}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}


@dataclass(frozen=True)
class Piece:
    """A contiguous run of graph nodes, run as one sub-module.

    Attributes:
        name: the layers' common module path (``"layer1.0"``), a layer name, or
            ``"piece<i>"`` for a passive piece.
        nodes: fx node names in execution order.
        inputs: names of the values the piece reads from earlier pieces (or placeholders).
        outputs: names of its values that later pieces or the graph output read.
        layers: quantized layers learned in this piece (empty for a passive piece).
        others: quantized layers the piece runs but does not learn (already learned in an
            earlier piece, for a layer called more than once).
    """

    name: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layers: tuple[str, ...] = ()
    others: tuple[str, ...] = ()

    @property
    def is_unit(self) -> bool:
        return bool(self.layers)


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for an element-wise activation node (ReLU, GELU, ... as module, function or method)."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ACTIVATION_METHODS
    return False


def _body(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]


def common_prefix(names: Sequence[str]) -> str:
    """Longest common dotted module path of ``names`` (``""`` if none)."""
    parts = [n.split(".") for n in names]
    out: list[str] = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return ".".join(out)


def _layer_nodes(body: list[fx.Node], layers: set[str]) -> dict[str, str]:
    """fx node name -> layer name, for call_module nodes of quantized layers."""
    return {n.name: str(n.target) for n in body
            if n.op == "call_module" and str(n.target) in layers}


def layer_groups(graph: fx.Graph, modules: dict[str, nn.Module], layers: Iterable[str],
                 include_activation: bool = True) -> list[list[str]]:
    """Node-name groups of the layer-wise units: each layer call (+ its following activation)."""
    body = _body(graph)
    calls = _layer_nodes(body, set(layers))
    groups = []
    for i, node in enumerate(body):
        if node.name not in calls:
            continue
        group = [node.name]
        nxt = body[i + 1] if i + 1 < len(body) else None
        if (include_activation and nxt is not None and len(node.users) == 1
                and nxt in node.users and is_activation(nxt, modules)):
            group.append(nxt.name)
        groups.append(group)
    return groups


def block_groups(graph: fx.Graph, modules: dict[str, nn.Module], layers: Iterable[str]
                 ) -> list[list[str]]:
    """Node-name groups of the block-wise units: single-entry single-exit segments."""
    body = _body(graph)
    index = {n.name: i for i, n in enumerate(body)}
    last_use = {}
    for n in graph.nodes:
        if n.op in ("output", "get_attr"):
            continue
        uses = [index.get(u.name, len(body)) for u in n.users]
        last_use[n.name] = max(uses, default=-1)
    placeholders = [n.name for n in graph.nodes if n.op == "placeholder"]
    calls = _layer_nodes(body, set(layers))
    segments: list[list[str]] = []
    current: list[str] = []
    for i, node in enumerate(body):
        current.append(node.name)
        live = [m for m in placeholders if last_use[m] > i]
        live += [body[j].name for j in range(i + 1) if last_use[body[j].name] > i]
        if live == [node.name]:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    nodes = {n.name: n for n in body}
    groups: list[list[str]] = []
    pending: list[str] = []
    for seg in segments:
        if groups and not pending and all(is_activation(nodes[n], modules) for n in seg):
            groups[-1] += seg  # a block's closing activation (the ReLU after the residual add)
            continue
        pending += seg
        if any(n in calls for n in seg):
            groups.append(pending)
            pending = []
    if pending and groups:
        groups[-1] += pending
    return groups


def _batched(example: dict[str, object], name: str, batch: int) -> bool:
    value = example.get(name)
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch


def make_pieces(graph: fx.Graph, layers: Sequence[str], groups: list[list[str]],
                example: dict[str, object], batch: int) -> list[Piece]:
    """Cut the graph into pieces: the unit ``groups`` and the passive runs between them.

    ``example`` holds every node's value on a batch of ``batch`` samples (from
    :func:`trace_values`); pieces are merged until every value crossing a boundary is a
    per-sample tensor. Returns pieces in execution order.
    """
    body = _body(graph)
    position = {n.name: i for i, n in enumerate(body)}
    calls = _layer_nodes(body, set(layers))
    # start of each piece: the first node of each group and the node after each group
    cuts = {0}
    for g in groups:
        first, last = position[g[0]], position[g[-1]]
        if last - first + 1 != len(g):
            raise ValueError(f"unit nodes {g} are not contiguous in the graph")
        cuts.update({first, last + 1})
    bounds = sorted(c for c in cuts if c < len(body)) + [len(body)]
    spans = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    unit_starts = {position[g[0]] for g in groups}
    users = {n.name: [position.get(u.name, len(body)) for u in n.users] for n in graph.nodes}
    producers = {n.name: position.get(n.name, -1) for n in graph.nodes}

    def crossing(start: int, end: int) -> list[str]:
        """Values produced before ``end`` and used at or after ``end``."""
        names = [n.name for n in graph.nodes if n.op == "placeholder"] + \
                [body[j].name for j in range(end)]
        return [m for m in names if producers[m] < end and any(u >= end for u in users[m])]

    merged = True
    while merged:  # merge spans until every boundary carries per-sample tensors only
        merged = False
        for k in range(len(spans) - 1):
            end = spans[k][1]
            if all(_batched(example, m, batch) for m in crossing(0, end)):
                continue
            spans[k] = (spans[k][0], spans[k + 1][1])
            del spans[k + 1]
            merged = True
            break
    pieces: list[Piece] = []
    learned: set[str] = set()
    for i, (start, end) in enumerate(spans):
        names = [body[j].name for j in range(start, end)]
        inside = set(names)
        inputs = []
        for j in range(start, end):
            for arg in body[j].all_input_nodes:
                if arg.op != "get_attr" and arg.name not in inside and arg.name not in inputs:
                    inputs.append(arg.name)
        outputs = [m for m in names if any(u >= end for u in users[m])]
        in_layers = [calls[m] for m in names if m in calls]
        is_unit = any(s in unit_starts for s in range(start, end))
        own = [n for n in dict.fromkeys(in_layers) if n not in learned] if is_unit else []
        learned.update(own)
        others = tuple(n for n in dict.fromkeys(in_layers) if n not in own)
        label = (common_prefix(own) or own[0]) if own else f"piece{i}"
        pieces.append(Piece(label, tuple(names), tuple(inputs), tuple(outputs), tuple(own),
                            others))
    return pieces


def piece_module(root: nn.Module, graph: fx.Graph, piece: Piece) -> fx.GraphModule:
    """A GraphModule running ``piece``'s nodes: arguments in ``piece.inputs`` order, returns a
    tuple in ``piece.outputs`` order. Its submodules are ``root``'s own (shared, not copied)."""
    nodes = {n.name: n for n in graph.nodes}
    sub = fx.Graph()
    env: dict[str, fx.Node] = {}
    for name in piece.inputs:
        env[name] = sub.placeholder(name)

    def lookup(arg: fx.Node) -> fx.Node:
        if arg.name not in env:  # a get_attr constant: copy it into the sub-graph
            if arg.op != "get_attr":
                raise KeyError(f"{piece.name}: node {arg.name} is not available")
            env[arg.name] = sub.node_copy(arg, lookup)
        return env[arg.name]

    for name in piece.nodes:
        env[name] = sub.node_copy(nodes[name], lookup)
    sub.output(tuple(env[n] for n in piece.outputs))
    return fx.GraphModule(root, sub)


def trace_values(gm: fx.GraphModule, args: Sequence[Tensor]) -> dict[str, object]:
    """Every node's value (by name) when ``gm`` runs on ``args`` (a small batch)."""
    values: dict[str, object] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        _Recorder(gm).run(*args)
    return values
