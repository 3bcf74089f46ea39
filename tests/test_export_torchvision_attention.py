"""torchvision attention models: Swin's functional qkv/proj and MaxViT's attention Linears
are quantized and run as integer kernels in ONNX Runtime (small inputs, random weights)."""

from __future__ import annotations

import pytest
import torch

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)


def _tiny_maxvit() -> torch.nn.Module:
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)


@pytest.mark.parametrize("arch", ["swin_t", "maxvit"])
def test_attention_linears_are_quantized_and_exported(tmp_path, arch):
    torch.manual_seed(0)
    if arch == "swin_t":
        model, size = torchvision.models.swin_t(weights=None, num_classes=10), 64
    else:
        model, size = _tiny_maxvit(), 32
    model.eval()
    calib = [torch.randn(2, 3, size, size)]
    _, table, report = bitsmith.prepare(model, calib[0])
    attention = [n for n in table.names if n.endswith((".qkv", ".proj", ".to_qkv", ".merge"))]
    assert len(attention) == (24 if arch == "swin_t" else 8)
    assert not table.warned_float_ops and not table.unused
    q = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8), calibration=calib)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0)
    assert cos > 0.98
    out = export_onnx(q, tmp_path / f"{arch}.onnx", calib[0][:1], calibration=calib)
    assert out.integer_layers == len(table) and out.float_layers == 0
    assert all(out.layers[n] == "MatMulIntegerToFloat" for n in attention)
    agreement = compare_onnx(q, tmp_path / f"{arch}.onnx", [x])
    assert agreement.max_abs_error < 0.1 * float(q(x).abs().max()) + 1e-3
