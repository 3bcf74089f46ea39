"""torchvision mobilenet_v2 (random weights, 64x64) exports and runs in ONNX Runtime."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")

from test_export_torchvision import check_torchvision_export


def test_mobilenet_v2_exports_and_runs(tmp_path):
    check_torchvision_export(tmp_path, "mobilenet_v2")
