"""Every parameterised op that stays float is listed with its reason; quantize warns once."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx
from bitsmith.export.errors import ExportWarning
from bitsmith.graph import ConversionWarning

pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)


class FunctionalConv(nn.Module):
    """A conv written as ``F.conv2d(x, self.weight)``: not a module bitsmith can swap."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class Mixed(nn.Module):
    """Functional conv, a Linear used through its weight, an unused Linear, LayerNorm, LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = FunctionalConv()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.proj = nn.Linear(8, 8)
        self.spare = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.stem(x)))  # (N, 8, H, W)
        seq = self.norm(h.flatten(2).transpose(1, 2))  # (N, HW, 8)
        seq, _ = self.lstm(seq)
        seq = F.linear(seq, self.proj.weight, self.proj.bias)  # functional use of a Linear
        return self.head(seq.mean(1))


def test_float_ops_are_listed_with_their_reasons():
    _, table, report = bitsmith.prepare(Mixed().eval(), torch.randn(2, 3, 8, 8))
    assert table.names == ["conv", "head"]
    ops = {op.name: op for op in table.float_ops}
    # traced: the conv2d call is inlined into the model's graph (eager: "unsupported")
    assert ops["stem"].kind == "functional" and "conv2d" in ops["stem"].reason
    assert ops["proj"].kind == "functional" and "linear" in ops["proj"].reason
    assert "spare" not in ops  # torch.fx drops modules forward never uses
    assert ops["lstm"].kind == "recurrent"
    assert ops["norm"].kind == "norm" and not ops["norm"].warns
    assert {op.name for op in table.warned_float_ops} == {"stem", "proj", "lstm"}
    assert "parameterised ops that stay float" in report.summary()


def test_quantize_warns_once_with_the_list_and_the_model_exports(tmp_path):
    model = Mixed().eval()
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    names = bitsmith.prepare(model, calib[0])[1].names
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = bitsmith.quantize(model, Policy.uniform(names, W8, A8), calibration=calib)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConversionWarning)
                and "stay float" in str(w.message)]
    assert len(messages) == 1
    for name in ("stem", "proj", "lstm"):
        assert f"  {name} (" in messages[0]
    assert "norm (" not in messages[0] and "1 normalisation" in messages[0]
    report = export_onnx(q, tmp_path / "mixed.onnx", calib[0][:1], calibration=calib)
    assert report.integer_layers == 2  # an LSTM exports as a float ONNX LSTM
    assert compare_onnx(q, tmp_path / "mixed.onnx", [torch.randn(8, 3, 8, 8)]).max_abs_error < 0.05


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.a(x)
        return self.b(x)


def test_fallback_export_warns_that_the_graph_follows_the_example(tmp_path):
    model = Branchy().eval()
    calib = [torch.randn(8, 6).abs(), -torch.randn(8, 6).abs()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = bitsmith.quantize(model, Policy.uniform(["a"], W8, A8), calibration=calib)
    # the example (positive mean) never reaches b: listed, and the warning names it
    assert [(op.name, op.kind) for op in q.bitsmith.layer_table.float_ops] == [("b", "unused")]
    assert any("  b (Linear, unused" in str(w.message) for w in caught)
    with pytest.warns(ExportWarning, match=r"specialised to the control flow.*x\.mean\(\) > 0"):
        report = export_onnx(q, tmp_path / "b.onnx", calib[0][:1], calibration=calib)
    assert any("specialised" in note for note in report.notes)
