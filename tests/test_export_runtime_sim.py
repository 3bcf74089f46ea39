"""The simulation of an export: the integer chains' points and int32 biases in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from onnx import TensorProto, helper
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import (
    ExportError,
    compare_onnx,
    compare_onnx_optimisation,
    compare_onnx_references,
    export_onnx,
    runtime_simulation,
)
from bitsmith.export.ort import make_session, run
from bitsmith.export.qparams import ActQParams, act_qparams, weight_qparams
from bitsmith.export.runtime_sim import RuntimeQuantize, _Capture

A8 = QSpec("uniform_asymmetric", 8)
W8 = QSpec("uniform_symmetric", 8, "channel")


class ResidualConcatNet(nn.Module):
    """Conv-BN-ReLU(inplace) -> MaxPool, a residual Add, a downsampling block with ResNet's
    strided, zero-padded shortcut, a Concat and average pooling: every kind of
    integer-chain point (layer outputs before Add / Concat, Add output, the shortcut read of
    a layer input, data movement, pooling outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.b = nn.Conv2d(12, 8, 1)
        self.c = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.stem(x))))
        y = torch.relu(self.a(x) + x)
        shortcut = nn.functional.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        d = torch.relu(self.down(y) + shortcut)
        z = torch.cat([self.b(d), self.c(d)], 1)
        return self.fc(nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResidualConcatNet())
    calib = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    _, table, _ = bitsmith.prepare(model, calib[0][:1])
    q = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8), calibration=calib)
    report = export_onnx(q, tmp_path / "q.onnx", calib[0][:1], calibration=calib)
    return q, report


def _max_error(model: nn.Module, session, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x).numpy()
    return float(np.abs(run(session, [x.numpy()])[0] - ref).max())


def test_the_simulation_of_the_export_computes_what_onnx_runtime_runs(exported):
    q, report = exported
    assert report.runtime_points and report.runtime_unmatched == []
    assert set(report.int32_bias_layers) == {"stem", "a", "down", "b", "c", "fc"}
    assert {r for p in report.runtime_points for r in p.readers} >= {"Add", "Concat", "Pad"}
    assert max(p.match_error for p in report.runtime_points) < 0.01
    sim = runtime_simulation(q, report)
    assert sum(isinstance(m, RuntimeQuantize) for m in sim.modules()) > 0
    session = make_session(report.path)  # the optimised graph: integer kernels
    x = torch.randn(64, 3, 16, 16)
    plain, modelled = _max_error(q, session, x), _max_error(sim, session, x)
    assert modelled < plain / 100  # 1.2e-7 vs 6.3e-3 when written
    with torch.no_grad():
        assert bool((sim(x).argmax(1) == torch.from_numpy(
            run(session, [x.numpy()])[0]).argmax(1)).all())


def test_onnx_runtime_reproduces_itself_with_optimisations_off(exported):
    """The optimised session (integer kernels) and the unoptimised one (float ops between
    the same Q/DQ pairs) differ by float rounding only; the unoptimised one computes the
    simulation of the export, not the plain simulation."""
    q, report = exported
    x = [torch.randn(64, 3, 16, 16)]
    itself = compare_onnx_optimisation(report.path, x)
    assert itself.count == 64 and itself.top1_agreement == 100.0
    assert 0.0 < itself.max_abs_error < 1e-5  # two sessions, 1.2e-7 apart when written
    modelled = compare_onnx(runtime_simulation(q, report), report.path, x, optimize=False)
    assert modelled.max_abs_error < 1e-5
    assert compare_onnx(q, report.path, x, optimize=False).max_abs_error > 1e-3
    # one pass of the optimised session serves several references, with the same numbers
    found = compare_onnx_references(report.path, {"sim": q, "itself": "unoptimised"}, x)
    assert found == {"sim": compare_onnx(q, report.path, x), "itself": itself}
    with pytest.raises(ValueError, match="unknown 'optimised'"):
        compare_onnx_references(report.path, {"x": "optimised"}, x)


def test_locating_the_points_can_be_skipped(exported, tmp_path):
    """The tuner's runtime backend scores the ONNX session itself and skips the search."""
    q, report = exported
    x = torch.randn(16, 3, 16, 16)
    skipped = export_onnx(q, tmp_path / "s.onnx", x[:1], calibration=[x], runtime_model=False)
    assert skipped.runtime_points == [] and skipped.runtime_unmatched == []
    assert skipped.int32_bias_layers == report.int32_bias_layers


def test_runtime_simulation_leaves_the_quantized_model_alone(exported):
    q, report = exported
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = q(x).clone()
        bias = q.get_submodule("stem").bias.detach().clone()
        runtime_simulation(q, report)
        assert torch.equal(q(x), before) and torch.equal(q.get_submodule("stem").bias, bias)


def test_int32_biases_are_rounded_to_the_accumulator_step(exported):
    q, report = exported
    sim = runtime_simulation(q, report)
    layer = q.get_submodule("a")
    act, weight = act_qparams("a", layer.input_quantizer), weight_qparams(layer)
    step = torch.from_numpy(np.float32(act.scale) * weight.scale)
    rounded = sim.get_submodule("a").bias.detach()
    assert torch.allclose(rounded / step, torch.round(rounded / step), atol=1e-3)
    assert float((rounded - layer.bias.detach()).abs().max()) <= 0.5 * float(step.max()) * 1.001


def test_runtime_quantize_equals_onnx_quantize_dequantize():
    """Same rounding (half to even) and saturation as QuantizeLinear -> DequantizeLinear,
    including a narrower grid (qmin, qmax) that the export clips first."""
    grid = ActQParams(0.1, 7, 2, 250)
    x = np.concatenate([np.arange(-1.5, 25.6, 0.05), (np.arange(-3, 250) + 0.5) * 0.1,
                        [-100.0, 100.0]]).astype(np.float32)
    lo, hi = grid.clip_range
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
         helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", TensorProto.UINT8, [], [7]),
         helper.make_tensor("lo", TensorProto.FLOAT, [], [lo]),
         helper.make_tensor("hi", TensorProto.FLOAT, [], [hi])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_out = run(make_session(model.SerializeToString()), [x])[0]
    torch_out = RuntimeQuantize(grid)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(torch_out, onnx_out)


def test_a_report_of_another_model_is_a_clear_error(exported, tmp_path, tiny_net):
    _, report = exported
    calib = [torch.randn(8, 3, 16, 16)]
    names = ["conv1", "dw", "pw", "fc"]
    other = bitsmith.quantize(tiny_net, Policy.uniform(names, W8, A8), calibration=calib)
    with pytest.raises(ExportError, match="another model's export"):
        runtime_simulation(other, report)


def test_captured_outputs_survive_in_place_activations():
    """An in-place ReLU overwrites its input tensor; the capture keeps the value each node
    produced (else a pre-activation point would find no twin or a wrong one)."""
    graph = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)))
    capture = _Capture(graph)
    capture.run(torch.randn(2, 3, 4, 4))
    outputs = dict(capture.by_shape[(2, 4, 4, 4)])
    assert float(outputs["_0"].min()) < 0 and float(outputs["_1"].min()) == 0


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it (eager fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        if y.mean() > -1:  # always taken; fx cannot know
            y = y + self.b(y)
        return self.fc(y.mean((2, 3)))


def test_points_of_an_untraced_model_are_reported_unmatched(tmp_path):
    torch.manual_seed(0)
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    with pytest.warns(UserWarning):
        q = bitsmith.quantize(Branchy(), Policy.uniform(["a", "b", "fc"], W8, A8),
                              calibration=calib)
        report = export_onnx(q, tmp_path / "b.onnx", calib[0][:1], calibration=calib)
    assert report.runtime_points == [] and report.runtime_unmatched
    sim = runtime_simulation(q, report)  # the int32 biases still apply
    assert not torch.equal(sim.get_submodule("a").bias, q.get_submodule("a").bias)
