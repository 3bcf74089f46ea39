"""Calibrated ranges narrowed to what a following saturating activation can tell apart.

An integer chain quantizes a layer's output before its activation (ONNX Runtime fuses
``DQ -> Conv -> Q`` only with a ``Q`` right after the layer). Where that activation
saturates (``Sigmoid``, ``Tanh``, ``HardSigmoid``, SiLU = ``x * Sigmoid(x)``,
``HardSwish``, GELU's negative side), values beyond its saturation point all give (nearly)
the same output, so
calibrating the point on its full range wastes the uint8 grid on them: an SE gate's
pre-sigmoid output spanning +-2,500 gets a step of ~20 and every gate rounds to 0, 1/2 or
1 (EfficientNet-V2-S with such points agreed with its simulation on 15% of argmaxes; with
the ranges narrowed, 97.5%, ``benchmarks/architectures.py``). :func:`narrow_ranges` clips
each calibrated ``(lo, hi)`` to the union of its consumers' active ranges; a tensor with
any other consumer keeps its range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import helper

#: |x| beyond which Sigmoid is within 6.2e-6 of 0 or 1 (well below a uint8 output step).
SIGMOID_BOUND = 12.0
#: |x| beyond which Tanh is within 1.3e-5 of -1 or 1.
TANH_BOUND = 6.0
#: x below which GELU, x * Phi(x), is within 6.1e-9 of 0.
GELU_BOUND = 6.0

Bounds = tuple[float | None, float | None]  # None: that side does not saturate
Consumers = Mapping[str, Sequence[tuple[onnx.NodeProto, int]]]


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(helper.get_attribute_value(a))
    return default


def _hard_sigmoid_bounds(node: onnx.NodeProto) -> Bounds:
    alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    if alpha <= 0:
        return None, None
    return -beta / alpha, (1.0 - beta) / alpha  # alpha * x + beta clipped to [0, 1]


def _users(tensor: str, consumers: Consumers, op: str) -> list[onnx.NodeProto]:
    return [n for n, _ in consumers.get(tensor, ()) if n.op_type == op]


def _gated_by_sigmoid(node: onnx.NodeProto, tensor: str, consumers: Consumers) -> bool:
    """``node`` is ``Mul(tensor, Sigmoid(tensor))`` (SiLU as the ONNX exporter writes it)."""
    if node.op_type != "Mul" or tensor not in node.input:
        return False
    gates = {n.output[0] for n in _users(tensor, consumers, "Sigmoid")}
    return any(i in gates for i in node.input if i != tensor)


def _erf_gelu_nodes(tensor: str, consumers: Consumers) -> list[onnx.NodeProto]:
    """The ``Div`` and ``Mul`` reading ``tensor`` in the exporter's exact GELU:
    ``Mul(tensor, Add(Erf(Div(tensor, sqrt 2)), 1))``."""
    found: list[onnx.NodeProto] = []
    for div in _users(tensor, consumers, "Div"):
        for erf in _users(div.output[0], consumers, "Erf"):
            for add in _users(erf.output[0], consumers, "Add"):
                for mul in _users(add.output[0], consumers, "Mul"):
                    if tensor in mul.input:
                        found += [div, mul]
    return found


def consumer_bounds(node: onnx.NodeProto, tensor: str, consumers: Consumers) -> Bounds:
    """Where ``node``'s output stops changing with ``tensor`` (``(None, None)``: nowhere)."""
    op = node.op_type
    if op == "Sigmoid":
        return -SIGMOID_BOUND, SIGMOID_BOUND
    if op == "Tanh":
        return -TANH_BOUND, TANH_BOUND
    if op == "HardSigmoid":
        return _hard_sigmoid_bounds(node)
    if op == "HardSwish":
        return -3.0, None  # x * relu6(x + 3) / 6: exactly 0 below -3, linear above
    if _gated_by_sigmoid(node, tensor, consumers):
        return -SIGMOID_BOUND, None  # x * sigmoid(x) > -7.4e-5 below -12
    if op in ("Div", "Mul") and node in _erf_gelu_nodes(tensor, consumers):
        return -GELU_BOUND, None
    return None, None


def active_bounds(tensor: str, consumers: Consumers) -> Bounds:
    """Union of the active ranges of every consumer of ``tensor``."""
    users = consumers.get(tensor, ())
    if not users:
        return None, None
    los, his = zip(*(consumer_bounds(node, tensor, consumers) for node, _ in users))
    lo = None if any(v is None for v in los) else min(v for v in los if v is not None)
    hi = None if any(v is None for v in his) else max(v for v in his if v is not None)
    return lo, hi


def narrow_ranges(ranges: Mapping[str, tuple[float, float]], consumers: Consumers,
                  graph_outputs: frozenset[str] | set[str] = frozenset()
                  ) -> dict[str, tuple[float, float]]:
    """``ranges`` with each ``(lo, hi)`` clipped to its consumers' active range.

    An end moves only to a bound strictly inside ``(lo, hi)``: a range wholly beyond a
    bound (every value saturates) and a graph output (the caller reads the values
    themselves) keep their range.
    """
    out = {}
    for name, (lo, hi) in ranges.items():
        lo_b, hi_b = (None, None) if name in graph_outputs else active_bounds(name, consumers)
        new_lo = lo_b if lo_b is not None and lo < lo_b < hi else lo
        new_hi = hi_b if hi_b is not None and lo < hi_b < hi else hi
        out[name] = (new_lo, new_hi)
    return out
