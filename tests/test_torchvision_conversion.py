"""Conversion of unmodified torchvision architectures (random weights): W8A8 stays close to FP32."""

from __future__ import annotations

import warnings

import pytest
import torch

import bitsmith
from bitsmith.policy import Policy, QSpec

torchvision = pytest.importorskip("torchvision")

# (architecture, input size): convnets at small inputs to keep the suite fast on CPU;
# ViT-B/16 needs its native 224x224.
ARCHS = [
    ("resnet18", 64), ("resnet50", 64), ("mobilenet_v2", 64), ("mobilenet_v3_small", 64),
    ("efficientnet_b0", 64), ("shufflenet_v2_x1_0", 64), ("squeezenet1_0", 64),
    ("densenet121", 64), ("vgg11_bn", 32), ("regnet_x_400mf", 64), ("convnext_tiny", 64),
    ("vit_b_16", 224),
]


def _calibrated_bn(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Random-init BN has running stats (0, 1) that do not match the data, which makes deep
    random nets degenerate; a few train-mode batches give them realistic statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


@pytest.mark.parametrize("arch, size", ARCHS, ids=[a for a, _ in ARCHS])
def test_w8a8_close_to_fp32(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    if arch == "vit_b_16":
        # torchvision zero-initialises the ViT head: logits would be all zero.
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        model.eval()
    else:
        model = _calibrated_bn(model, size)
    batches = [torch.randn(2, 3, size, size) for _ in range(2)]
    test_x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bitsmith.graph.ConversionWarning)  # must trace
        work, table, report = bitsmith.prepare(model, batches[0])
    assert report.traced and len(table) > 0
    policy = Policy.uniform(table.names, QSpec("uniform_symmetric", 8, "channel"),
                            QSpec("uniform_asymmetric", 8))
    qmodel = bitsmith.quantize(model, policy, calibration=batches)
    with torch.no_grad():
        ref, out = model(test_x), qmodel(test_x)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0).item()
    assert cos >= 0.99, f"{arch}: cosine similarity of W8A8 logits to FP32 is {cos:.4f}"
    assert len(qmodel.bitsmith.report.quantized) == len(table)
