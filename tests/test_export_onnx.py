"""ONNX QDQ export: runs in ONNX Runtime, agrees with the simulation, clear errors."""

from __future__ import annotations

import onnx
import pytest
import torch

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.export import ExportError, compare_onnx, export_fp32_onnx, export_onnx
from bitsmith.export.ort import make_session, run

A8 = QSpec("uniform_asymmetric", 8)
W8 = QSpec("uniform_symmetric", 8, "channel")
NAMES = ["conv1", "dw", "pw", "fc"]


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture
def calib() -> list[torch.Tensor]:
    return [torch.randn(16, 3, 16, 16) for _ in range(4)]


def test_w8a8_export_runs_and_agrees(tmp_path, tiny_net, calib):
    q = bitsmith.quantize(tiny_net, Policy.uniform(NAMES, W8, A8), calibration=calib)
    report = export_onnx(q, tmp_path / "q.onnx", calib[0][:1], calibration=calib)
    assert report.integer_layers == 4 and report.float_layers == 0
    ops = _ops(tmp_path / "q.onnx")
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["conv1.weight.q"].data_type == onnx.TensorProto.INT8
    assert inits["conv1.bias.q"].data_type == onnx.TensorProto.INT32
    assert "conv1.weight" not in inits  # float weight replaced
    test = [torch.randn(32, 3, 16, 16) for _ in range(2)]
    agreement = compare_onnx(q, tmp_path / "q.onnx", test)
    assert agreement.count == 64 and agreement.top1_agreement >= 90.0
    logits = q(test[0]).detach()
    assert agreement.max_abs_error < 0.1 * float(logits.abs().max())


def test_simulation_points_only_is_close_to_the_simulation(tmp_path, tiny_net, calib):
    q = bitsmith.quantize(tiny_net, Policy.uniform(NAMES, W8, A8), calibration=calib)
    report = export_onnx(q, tmp_path / "s.onnx", calib[0][:1], integer_outputs=False)
    assert report.calibrated_points == []
    x = torch.randn(8, 3, 16, 16)
    out = run(make_session(tmp_path / "s.onnx", optimize=False), [x.numpy()])[0]
    ref = q(x).detach().numpy()
    assert abs(out - ref).max() < 0.05 * abs(ref).max()


def test_float_layers_stay_float_and_low_bit_weights_use_int8_grid(tmp_path, tiny_net, calib):
    policy = Policy({
        "conv1": LayerSpec(QSpec("uniform_symmetric", 4, "channel"), QSpec("uniform_asymmetric",
                                                                              6)),
        "dw": LayerSpec(QSpec("binary", 1, "channel"), A8),
        "pw": LayerSpec(QSpec("mu_l2q", 3, "channel"), A8),  # no integer lattice
    })  # fc not named: float
    q = bitsmith.quantize(tiny_net, policy, calibration=calib)
    report = export_onnx(q, tmp_path / "m.onnx", calib[0][:1], calibration=calib)
    assert report.intended["conv1"].startswith("int8") and report.intended["dw"].startswith("int8")
    assert report.intended["pw"].startswith("float op")
    # what ONNX Runtime's optimised graph runs
    assert report.layers["conv1"] == report.layers["dw"] == "QLinearConv"
    assert report.layers["pw"] in ("Conv", "FusedConv") and report.float_layer_names == ["pw", "fc"]
    assert report.integer_layers == 2 and report.float_layers == 2
    model = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["conv1.weight.q"].min() >= -7 and inits["conv1.weight.q"].max() <= 7
    assert set(inits["dw.weight.q"].reshape(-1).tolist()) <= {-1, 1}
    assert "fc.weight" in inits and "pw.weight" in inits  # float weights kept
    assert "Clip" in _ops(tmp_path / "m.onnx")  # 6-bit activation grid clamped exactly
    x = torch.randn(16, 3, 16, 16)
    out = run(make_session(tmp_path / "m.onnx"), [x.numpy()])[0]
    assert out.shape == (16, 10)
    assert compare_onnx(q, tmp_path / "m.onnx", [x]).top1_agreement >= 80.0


def test_fp32_export_matches_float_model(tmp_path, tiny_net):
    x = torch.randn(4, 3, 16, 16)
    path = export_fp32_onnx(tiny_net, tmp_path / "f.onnx", x)
    out = run(make_session(path), [x.numpy()])[0]
    assert abs(out - tiny_net(x).detach().numpy()).max() < 1e-4


def test_bad_input_gives_clear_errors(tmp_path, tiny_net, calib):
    with pytest.raises(ExportError, match="not quantized"):
        export_onnx(tiny_net, tmp_path / "x.onnx", calib[0][:1])
    cases = [
        (LayerSpec(W8, QSpec("binary", 1)), "not an integer grid"),
        (LayerSpec(W8, QSpec("uniform_asymmetric", 8, "channel")), "per-channel activation"),
        (LayerSpec(W8, QSpec("uniform_asymmetric", 12)), "12-bit activations"),
        (LayerSpec(QSpec("uniform_symmetric", 10), A8), "10-bit weights"),
    ]
    for spec, message in cases:
        q = bitsmith.quantize(tiny_net, Policy({"pw": spec}), calibration=calib)
        with pytest.raises(ExportError, match=f"pw.*{message}"):
            export_onnx(q, tmp_path / "x.onnx", calib[0][:1], calibration=calib)
    q = bitsmith.quantize(tiny_net, Policy.uniform(NAMES, W8, A8), calibration=calib)
    with pytest.raises(ExportError, match="opset"):
        export_onnx(q, tmp_path / "x.onnx", calib[0][:1], opset=11)
    with pytest.raises(ExportError, match="example_inputs"):
        export_onnx(q, tmp_path / "x.onnx", "not a tensor")


def test_shared_weight_layer_is_refused(tmp_path, calib):
    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x))).mean((2, 3))

    q = bitsmith.quantize(Twice(), Policy({"conv": LayerSpec(W8, A8)}), calibration=calib)
    with pytest.raises(ExportError, match="conv: its weight initializer"):
        export_onnx(q, tmp_path / "t.onnx", calib[0][:1], calibration=calib)


def test_deploy_notes_name_only_layers_that_run_float(tmp_path, tiny_net, calib):
    """The export summary's 'without an integer kernel' note lists the layers ONNX Runtime runs
    in float (read from its optimised graph), not every layer whose op name is not 'int8...'."""
    from bitsmith.export.pipeline import Timing, deploy

    q = bitsmith.quantize(tiny_net, Policy.uniform(NAMES, W8, A8), calibration=calib)
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in calib[:2]]
    summary = deploy(tiny_net, q, tmp_path, example_inputs=calib[0][:2], calibration=calib,
                     evaluation=labelled, timing=Timing(batches=(1,), runs=2, threads=1))
    assert summary.onnx["integer_layers"] == 4
    assert not [n for n in summary.notes if "without an integer kernel" in n]


def test_an_op_onnx_cannot_express_is_a_clear_export_error(tmp_path):
    """torch.onnx.export's own failure (here adaptive pooling to a size that does not divide
    the input, as VGG's AdaptiveAvgPool2d(7) on a 2x2 map) becomes one ExportError line that
    names the model, the input shape and the fix; no half-written file is left."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(3),
                              torch.nn.Flatten(), torch.nn.Linear(36, 2)).eval()
    with pytest.raises(ExportError, match=r"Sequential: .*shape \(1, 3, 4, 4\).*Fix: export"):
        export_fp32_onnx(net, tmp_path / "f.onnx", torch.randn(1, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []
