"""Block-wise low-bit weights (granularity 'block<N>'): quantizer, cost model and packed
artifact agree; Linear layers export to ONNX Runtime's MatMulNBits; latency tables time it
and a latency budget picks it only where the table says it is faster."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.allocation import CandidateSpace, allocate
from bitsmith.cost import Budget
from bitsmith.export import (
    compare_onnx,
    export_onnx,
    load_packed,
    measure_latency_table,
    precision_key,
    save_packed,
)
from bitsmith.export.kernels import kernel_class
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import PolicyError

pytestmark = pytest.mark.usefixtures("one_thread")
A8 = QSpec("uniform_asymmetric", 8)
W8A8 = LayerSpec(QSpec("uniform_symmetric", 8, "channel"), A8)
W4_BLOCK = LayerSpec(QSpec("uniform_symmetric", 4, "block32"), None)  # weight-only


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(70, 64), nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_block_granularity_is_validated():
    assert QSpec("uniform_symmetric", 4, "block128").short() == "uniform_symmetric:4/block128"
    for bad in ("block24", "block8", "blocks", "row"):
        with pytest.raises(PolicyError, match="granularity"):
            QSpec("uniform_symmetric", 4, bad)
    with pytest.raises(ValueError, match="for weights"):
        Quantizer(QSpec("uniform_asymmetric", 8, "block32"), "act")


def test_each_block_has_its_own_grid():
    q = Quantizer(QSpec("uniform_symmetric", 4, "block32"), "weight")
    w = torch.randn(6, 70)
    w[:, 40] = 50.0  # an outlier only coarsens its own block
    out = q(w)
    assert q.params()["scale"].shape == (6 * 3, 1)  # 70 inputs -> 3 blocks of 32
    for row in range(6):
        for start in (0, 32, 64):
            assert len(torch.unique(out[row, start:start + 32])) <= 15
    assert (out[:, :32] - w[:, :32]).abs().max() < 0.5  # block 0 keeps a fine scale


def test_cost_model_and_packed_artifact_agree(tmp_path):
    model = MLP().eval()
    policy = Policy({"fc1": W4_BLOCK,
                     "fc2": LayerSpec(QSpec("uniform_asymmetric", 2, "block16"), A8),
                     "fc3": W8A8})
    x = torch.randn(16, 70)
    q = bitsmith.quantize(model, policy, calibration=[x])
    report = save_packed(q, tmp_path / "m.safetensors", example_inputs=x[:1])
    assert report.tensor_bytes == report.predicted_bytes and not report.differences
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.safetensors", model=MLP())(x), q(x))


@pytest.mark.parametrize("scheme, bits", [("uniform_symmetric", 4), ("uniform_asymmetric", 4),
                                          ("uniform_symmetric", 8), ("uniform_symmetric", 2)])
def test_block_weights_export_to_matmulnbits(tmp_path, scheme, bits):
    model = MLP().eval()
    spec = LayerSpec(QSpec(scheme, bits, "block32"), None)
    q = bitsmith.quantize(model, Policy({"fc1": spec, "fc2": spec, "fc3": W8A8}),
                          calibration=[torch.randn(16, 70)])
    report = export_onnx(q, tmp_path / "nb.onnx", torch.randn(1, 70),
                         calibration=[torch.randn(16, 70)])
    assert report.layers == {"fc1": "MatMulNBits", "fc2": "MatMulNBits", "fc3": "QGemm"}
    assert report.weight_only_layers == 2 and report.integer_layers == 1
    nodes = [n for n in onnx.load(str(tmp_path / "nb.onnx")).graph.node
             if n.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in nodes[0].attribute}["bits"] == bits
    # the weights are the simulation's exactly: fc1 alone (float input, weight-only) agrees
    q1 = bitsmith.quantize(model, Policy({"fc1": spec}), calibration=[torch.randn(4, 70)])
    export_onnx(q1, tmp_path / "one.onnx", torch.randn(1, 70))
    assert compare_onnx(q1, tmp_path / "one.onnx", [torch.randn(8, 70)]).max_abs_error < 1e-5


def test_unsupported_bit_width_runs_as_float_matmul(tmp_path):
    model = MLP().eval()
    spec = LayerSpec(QSpec("uniform_symmetric", 3, "block32"), None)
    q = bitsmith.quantize(model, Policy({"fc1": spec}), calibration=[torch.randn(4, 70)])
    report = export_onnx(q, tmp_path / "f.onnx", torch.randn(1, 70))
    assert kernel_class(report.layers["fc1"]) == "float" and report.weight_only_layers == 0
    assert compare_onnx(q, tmp_path / "f.onnx", [torch.randn(8, 70)]).max_abs_error < 1e-5


def test_latency_budget_picks_block_weights_only_where_the_table_says_faster():
    model = MLP().eval()
    candidates = [W8A8, W4_BLOCK]
    assert precision_key(W4_BLOCK) == "w4g32"
    table = measure_latency_table(model, candidates, example_inputs=torch.randn(1, 70),
                                  runtime_options={"threads": 1, "runs": 5, "warmup": 1})
    assert all({"w8a8", "w4g32"} <= set(table.entries[n]) for n in ("fc1", "fc2", "fc3"))
    _, layers, _ = bitsmith.prepare(model, torch.randn(1, 70))
    space = CandidateSpace(layers, {n: candidates for n in layers.names})
    fastest = {n: min(candidates, key=lambda s, n=n: table.latency(n, s)) for n in layers.names}
    budget = sum(table.latency(n, fastest[n]) for n in layers.names)
    # sensitivity prefers W8A8 everywhere; only the latency budget can force the other
    sens = {n: [0.0, 1.0] for n in layers.names}
    result = allocate(space, sens, Budget(latency=budget * 1.0000001), latency=table.latency)
    assert dict(result.policy.items()) == fastest
