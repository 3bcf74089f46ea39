"""torchvision resnet18 (random weights, 64x64) exports and runs in ONNX Runtime.

``check_torchvision_export`` is shared with ``test_export_torchvision_mobilenet.py`` (one
model per file keeps each file fast).
"""

from __future__ import annotations

import onnx
import pytest
import torch

import bitsmith
from bitsmith import QSpec
from bitsmith.export import compare_onnx, export_onnx
from bitsmith.export.ort import make_session
from bitsmith.models import build_model
from bitsmith.policy import build_policy

pytest.importorskip("torchvision")


def check_torchvision_export(tmp_path, name: str) -> None:
    """W4A8 (first/last layer W8A8) export of ``torchvision:<name>`` runs and agrees."""
    model = build_model(f"torchvision:{name}", num_classes=10).eval()
    calib = [torch.randn(2, 3, 64, 64)]
    _, table, _ = bitsmith.prepare(model, calib[0])
    policy = build_policy(table.names, QSpec("uniform_symmetric", 4, "channel"),
                          QSpec("uniform_asymmetric", 8), first_last="int8")
    q = bitsmith.quantize(model, policy, calibration=calib)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(q, path, calib[0], calibration=calib)
    onnx.checker.check_model(str(path))
    assert report.integer_layers == len(table)
    session = make_session(path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= len(table)
    x = torch.randn(3, 3, 64, 64)
    out = session.run(None, {"input": x.numpy()})[0]
    assert out.shape == (3, 10) and torch.isfinite(torch.from_numpy(out)).all()
    agreement = compare_onnx(q, path, [x])
    ref = q(x).detach()
    assert agreement.max_abs_error < 0.25 * float(ref.abs().max()) + 1e-3


def test_resnet18_exports_and_runs(tmp_path):
    check_torchvision_export(tmp_path, "resnet18")
