"""Integer-chain points that feed a saturating activation are calibrated on its active range
(bitsmith.export.saturation), so a wide pre-sigmoid output does not round every gate to 0,
1/2 or 1 (EfficientNet-V2-S's SE gates did)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx
from bitsmith.export.saturation import (
    GELU_BOUND,
    SIGMOID_BOUND,
    active_bounds,
    narrow_ranges,
)

pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)


def _consumers(*nodes: onnx.NodeProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in nodes:
        for i, name in enumerate(node.input):
            out.setdefault(name, []).append((node, i))
    return out


def test_bounds_per_activation():
    sig = helper.make_node("Sigmoid", ["x"], ["g"])
    silu = helper.make_node("Mul", ["x", "g"], ["y"])
    tanh = helper.make_node("Tanh", ["t"], ["u"])
    hsig = helper.make_node("HardSigmoid", ["h"], ["v"], alpha=0.25, beta=0.5)
    hswish = helper.make_node("HardSwish", ["w"], ["z"])
    add = helper.make_node("Add", ["a", "b"], ["c"])
    sig_a = helper.make_node("Sigmoid", ["a"], ["ga"])
    cons = _consumers(sig, silu, tanh, hsig, hswish, add, sig_a)
    assert active_bounds("x", cons) == (-SIGMOID_BOUND, None)  # SiLU: linear above
    assert active_bounds("t", cons) == (-6.0, 6.0)
    assert active_bounds("h", cons) == (-2.0, 2.0)  # 0.25 x + 0.5 clipped to [0, 1]
    assert active_bounds("w", cons) == (-3.0, None)
    assert active_bounds("a", cons) == (None, None)  # also read by an Add: keeps everything
    assert active_bounds("unused", cons) == (None, None)


def test_exact_gelu_saturates_below():
    """torch.onnx's GELU: Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), then Mul by 0.5."""
    div = helper.make_node("Div", ["x", "sqrt2"], ["d"])
    erf = helper.make_node("Erf", ["d"], ["e"])
    add = helper.make_node("Add", ["e", "one"], ["a"])
    mul = helper.make_node("Mul", ["x", "a"], ["m"])
    plain_div = helper.make_node("Div", ["y", "two"], ["h"])  # a Div without the Erf
    cons = _consumers(div, erf, add, mul, plain_div)
    assert active_bounds("x", cons) == (-GELU_BOUND, None)
    assert active_bounds("y", cons) == (None, None)


def test_narrow_ranges_keeps_zero_and_graph_outputs():
    sig = helper.make_node("Sigmoid", ["x"], ["g"])
    sig2 = helper.make_node("Sigmoid", ["p"], ["gp"])
    sig3 = helper.make_node("Sigmoid", ["o"], ["go"])
    cons = _consumers(sig, sig2, sig3)
    ranges = {"x": (-2500.0, 300.0), "p": (20.0, 90.0), "o": (-50.0, 50.0)}
    out = narrow_ranges(ranges, cons, {"o"})
    assert out["x"] == (-SIGMOID_BOUND, SIGMOID_BOUND)
    assert out["p"] == (20.0, 90.0)  # one-sided beyond the bound: left alone (0 on the grid)
    assert out["o"] == (-50.0, 50.0)  # a graph output is read as it is


class Gate(nn.Module):
    """Squeeze-and-excitation whose pre-sigmoid output spans hundreds in two channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.fc.weight[:2].mul_(1500.0)  # two wide channels, six near zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc(h.mean((2, 3), keepdim=True)))
        return self.head((h * gate).mean((2, 3)))


def test_wide_pre_sigmoid_point_is_calibrated_on_the_active_range(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Gate().eval()
    calib = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    names = bitsmith.prepare(model, calib[0])[1].names
    q = bitsmith.quantize(model, Policy.uniform(names, W8, A8), calibration=calib)
    with torch.no_grad():
        pre = model.fc(torch.relu(model.conv(calib[0])).mean((2, 3), keepdim=True))
    assert float(pre.abs().max()) > 100  # the wide range this test is about
    path = tmp_path / "gate.onnx"
    report = export_onnx(q, path, calib[0][:1], calibration=calib)
    assert report.layers["fc"] == "QLinearConv"  # still an integer chain
    graph = onnx.load(str(path)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    into_sigmoid = {n.input[0] for n in graph.node if n.op_type == "Sigmoid"}
    scales = [float(inits[n.input[1]]) for n in graph.node
              if n.op_type == "QuantizeLinear" and any(
                  d.op_type == "DequantizeLinear" and d.output[0] in into_sigmoid
                  and d.input[0] == n.output[0] for d in graph.node)]
    assert scales and all(s * 255 <= 2 * SIGMOID_BOUND + 1e-4 for s in scales)
    test = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    agreement = compare_onnx(q, path, test)
    with torch.no_grad():
        spread = float(np.ptp(torch.cat([q(x) for x in test]).numpy()))
    assert agreement.max_abs_error < 0.05 * spread
    # the same export calibrated on the full range: the gates round coarsely
    import bitsmith.export.onnx_qdq as onnx_qdq

    monkeypatch.setattr(onnx_qdq, "narrow_ranges", lambda ranges, *_: dict(ranges))
    export_onnx(q, tmp_path / "wide.onnx", calib[0][:1], calibration=calib)
    wide = compare_onnx(q, tmp_path / "wide.onnx", test)
    assert wide.mean_abs_error > 5 * agreement.mean_abs_error
