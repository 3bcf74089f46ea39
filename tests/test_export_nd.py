"""Linear layers on inputs of any rank export to integer kernels (checked on ONNX Runtime's
optimised graph); token-id models keep their input dtype in ONNX and the packed artifact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx, load_packed, save_packed
from bitsmith.export.kernels import kernel_class, runtime_kernels
from bitsmith.export.ort import make_session

pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)


class PointwiseBlock(nn.Module):
    """ConvNeXt-style: depthwise conv, then Linear layers on (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.fc2(nn.functional.gelu(self.fc1(self.norm(h)))).permute(0, 3, 1, 2)
        return self.head((x + h).mean((2, 3)))


def test_nd_linear_layers_run_integer_kernels(tmp_path):
    model = PointwiseBlock().eval()
    calib = [torch.randn(4, 8, 6, 6) for _ in range(2)]
    names = bitsmith.prepare(model, calib[0])[1].names
    q = bitsmith.quantize(model, Policy.uniform(names, W8, A8), calibration=calib)
    path = tmp_path / "pw.onnx"
    report = export_onnx(q, path, calib[0][:1], calibration=calib)
    graph = onnx.load(str(path)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    assert inits["fc1.weight.q"].shape == (8, 32)  # MatMul layout (in, out), int8
    assert inits["fc1.weight.scale"].shape == (32,)  # per output channel (axis 1)
    assert report.layers == {"dw": "QLinearConv", "fc1": "MatMulIntegerToFloat",
                             "fc2": "MatMulIntegerToFloat", "head": "QGemm"}
    assert report.integer_layers == 4 and report.float_layers == 0
    # the same classification straight from ONNX Runtime's optimised graph
    kernels = runtime_kernels(path, {n: "" for n in names})
    assert all(kernel_class(op) == "integer" for op in kernels.layers.values())
    agreement = compare_onnx(q, path, [torch.randn(16, 8, 6, 6)])
    assert agreement.top1_agreement >= 90.0 and agreement.max_abs_error < 0.1


def test_report_counts_float_kernels_when_ort_runs_float(tmp_path):
    """A layer the Policy keeps in float is reported as a float kernel, not by intent."""
    model = PointwiseBlock().eval()
    calib = [torch.randn(4, 8, 6, 6)]
    q = bitsmith.quantize(model, Policy.uniform(["dw", "fc1", "head"], W8, A8),
                          calibration=calib)
    report = export_onnx(q, tmp_path / "m.onnx", calib[0][:1], calibration=calib)
    assert kernel_class(report.layers["fc2"]) == "float" and report.float_layers == 1
    assert report.float_layer_names == ["fc2"]


class TokenNet(nn.Module):
    """Token ids -> embedding -> Linear per token -> logits per token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.embed(ids))))


def test_token_id_model_exports_and_packs_with_long_inputs(tmp_path):
    model = TokenNet().eval()
    calib = [torch.randint(0, 50, (4, 12)) for _ in range(2)]
    q = bitsmith.quantize(model, Policy.uniform(["fc", "out"], W8, A8), calibration=calib)
    report = export_onnx(q, tmp_path / "t.onnx", calib[0][:1], calibration=calib)
    graph = onnx.load(str(tmp_path / "t.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert report.integer_layers == 2
    test = torch.randint(0, 50, (3, 12))
    agreement = compare_onnx(q, tmp_path / "t.onnx", [test])
    assert agreement.count == 36 and agreement.top1_agreement >= 95.0  # one per token
    save_packed(q, tmp_path / "t.safetensors", example_inputs=calib[0][:1])
    loaded = load_packed(tmp_path / "t.safetensors", model=TokenNet())
    with torch.no_grad():
        assert torch.equal(loaded(test), q(test))


def test_deploy_times_a_token_id_model_on_its_own_inputs(tmp_path):
    """deploy's latency timing feeds the model's real example rows (int64 token ids, repeated
    to each batch size), not random floats ONNX Runtime refuses; bench's synthetic inputs
    follow the dtype the graph declares."""
    from bitsmith.export.pipeline import Timing, _timing_inputs, deploy, time_models

    model = TokenNet().eval()
    calib = [torch.randint(0, 50, (4, 12)) for _ in range(2)]
    q = bitsmith.quantize(model, Policy.uniform(["fc", "out"], W8, A8), calibration=calib)
    labelled = [(x, torch.randint(0, 50, x.shape)) for x in calib]
    summary = deploy(model, q, tmp_path, example_inputs=calib[0][:2], calibration=calib,
                     evaluation=labelled, timing=Timing(batches=(1, 3), runs=3, threads=1))
    assert set(summary.latency) == {"1", "3"}
    assert summary.latency["3"]["quantized"]["batch"] == 3
    assert summary.runtime_reproducibility["count"] == 96  # one decision per token
    synthetic = time_models([tmp_path / "quantized.onnx"], (12,), (2,), runs=3, threads=1)
    assert synthetic[2][0]["batch"] == 2
    session = make_session(tmp_path / "quantized.onnx", 1)
    [rows] = _timing_inputs(session, (12,), 5, calib[0][:2].numpy())
    assert rows.dtype == np.int64 and (rows == calib[0][[0, 1, 0, 1, 0]].numpy()).all()
    assert _timing_inputs(session, (12,), 2, None)[0].dtype == np.int64


class MaskedTokenNet(nn.Module):
    """Two inputs, as Hugging Face encoders take them: token ids and an attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(self.embed(ids))) * mask.unsqueeze(-1)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True))


def test_deploy_checks_and_times_a_model_with_two_inputs(tmp_path):
    """Token ids + attention mask through deploy: both inputs reach the FP32 and quantized
    ONNX graphs, the agreement and accuracy checks, the timing and the packed artifact."""
    from bitsmith.export.onnx_export import split_batch
    from bitsmith.export.pipeline import Timing, deploy

    torch.manual_seed(0)
    model = MaskedTokenNet().eval()
    ids, mask = torch.randint(0, 50, (48, 10)), torch.ones(48, 10)
    mask[:, 7:] = 0
    calib = [(ids[i:i + 16], mask[i:i + 16]) for i in range(0, 32, 16)]
    q = bitsmith.quantize(model, Policy.uniform(["fc", "head"], W8, A8), calibration=calib,
                          multi_input=True)
    labelled = [((ids[32:], mask[32:]), torch.randint(0, 3, (16,)))]
    summary = deploy(model, q, tmp_path, example_inputs=(ids[:2], mask[:2]),
                     calibration=calib, evaluation=labelled,
                     timing=Timing(batches=(1, 4), runs=3, threads=1))
    assert [len(onnx.load(str(tmp_path / f)).graph.input)
            for f in ("fp32.onnx", "quantized.onnx")] == [2, 2]
    assert summary.agreement["count"] == 16 and summary.agreement["top1_agreement"] == 100.0
    assert summary.accuracy["fp32"] is not None and set(summary.latency) == {"1", "4"}
    unlabelled = compare_onnx(q, tmp_path / "quantized.onnx", [(ids[32:], mask[32:])])
    assert unlabelled.count == 16 and unlabelled.onnx_accuracy is None
    loaded = load_packed(tmp_path / "model.safetensors", model=MaskedTokenNet())
    with torch.no_grad():
        assert torch.equal(loaded(ids[32:], mask[32:]), q(ids[32:], mask[32:]))
    x, y = split_batch((ids, mask, ids[:, 0]), 2)
    assert len(x) == 2 and y is not None and split_batch(ids, 1) == ((ids,), None)


class UnusedOutput(nn.Module):
    """A layer that runs in forward but whose output reaches no model output (like the pooler
    of a Hugging Face encoder wrapped to return its token states)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.pooler = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        self.pooler(h[:, 0])  # computed, never returned
        return h


def test_layer_removed_by_the_exporter_is_reported_absent(tmp_path):
    model = UnusedOutput().eval()
    calib = [torch.randn(4, 3, 8) for _ in range(2)]
    q = bitsmith.quantize(model, Policy.uniform(["fc", "pooler"], W8, A8), calibration=calib)
    path = tmp_path / "unused.onnx"
    report = export_onnx(q, path, calib[0][:1], calibration=calib)
    assert report.absent_layers == ["pooler"] and report.layers["pooler"] == "absent"
    assert report.integer_layers == 1 and report.float_layers == 0
    assert report.float_layer_names == []
    assert any("pooler" in note and "reach no model output" in note for note in report.notes)
    agreement = compare_onnx(q, path, [torch.randn(8, 3, 8)])
    assert agreement.max_abs_error < 0.1


class SharedOutput(nn.Module):
    """A conv whose output is both the next conv's input and one input of a float residual
    Add (ConvNeXt's downsampling layers): the Add must read it dequantized, or ONNX Runtime
    cannot fuse the first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 2, stride=2)
        self.block = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        return y + 0.5 * torch.tanh(self.block(y))


def test_layer_output_read_by_a_float_add_still_runs_an_integer_kernel(tmp_path):
    torch.manual_seed(0)
    model = SharedOutput().eval()
    calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    q = bitsmith.quantize(model, Policy.uniform(["down", "block"], W8, A8), calibration=calib)
    path = tmp_path / "shared.onnx"
    report = export_onnx(q, path, calib[0][:1], calibration=calib)
    assert report.layers["down"] == "QLinearConv", report.layers
    assert report.float_layers == 0
    agreement = compare_onnx(q, path, [torch.randn(4, 3, 16, 16)])
    with torch.no_grad():
        scale = float(q(calib[0]).abs().max())
    assert agreement.max_abs_error < 0.05 * scale
