from __future__ import annotations

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith.graph import ConversionError, ConversionWarning, LayerTable, is_quantized
from bitsmith.graph.quantizer import NotCalibratedError
from bitsmith.policy import FLOAT, Policy, PolicyError, QSpec, build_policy
from bitsmith.quantize import CalibrationError

W8 = QSpec("uniform_symmetric", 8, "channel")
A8 = QSpec("uniform_asymmetric", 8)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_fold_bn_is_exact_and_table(tiny_net, images):
    work, table, report = bitsmith.prepare(tiny_net, images[:1])
    assert report.traced
    assert sorted(report.folded_bn) == [("conv1", "bn1"), ("pw", "bn2")]
    torch.testing.assert_close(work(images), tiny_net(images), atol=1e-5, rtol=1e-4)
    assert table.names == ["conv1", "dw", "pw", "fc"]
    dw = table["dw"]
    assert dw.depthwise and dw.groups == 8 and dw.macs == 16 * 16 * 8 * 9
    assert table["pw"].pointwise
    assert table["fc"].macs == 16 * 10
    assert table.total_params == sum(p.numel() for p in work.parameters())
    # the user's model is untouched
    assert isinstance(tiny_net.bn1, nn.BatchNorm2d)


def test_quantize_w8a8_close_and_state_dict_keys(tiny_net, images):
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"], W8, A8)
    q = bitsmith.quantize(tiny_net, policy, calibration=[images[:4], images[4:]])
    assert all(is_quantized(q.get_submodule(n)) for n in policy)
    assert isinstance(q.get_submodule("conv1"), nn.Conv2d)
    assert cosine(q(images), tiny_net(images)) > 0.999
    assert "conv1.weight" in q.state_dict()
    assert q.bitsmith.policy == policy


def test_stats_gathered_once_reused_for_many_policies(tiny_net, images):
    stats = bitsmith.collect_stats(tiny_net, [images])
    names = list(stats.stats)
    direct = bitsmith.quantize(tiny_net, Policy.uniform(names, W8, A8), calibration=[images])
    reused = bitsmith.quantize(tiny_net, Policy.uniform(names, W8, A8), calibration=stats)
    torch.testing.assert_close(direct(images), reused(images))
    low = bitsmith.quantize(tiny_net, Policy.uniform(names, QSpec(bits=4), QSpec(
        "uniform_asymmetric", 4)), calibration=stats)
    assert cosine(low(images), tiny_net(images)) < cosine(reused(images), tiny_net(images))


def test_partial_policy_and_override_by_type(tiny_net, images):
    _, table, _ = bitsmith.prepare(tiny_net, images[:1])
    policy = build_policy(table.names, W8, A8, first_last="float",
                          overrides={"type:Conv2d": bitsmith.LayerSpec(W8, None)},
                          layer_types=table.types)
    q = bitsmith.quantize(tiny_net, policy, calibration=[images])
    assert not is_quantized(q.get_submodule("fc"))
    assert q.get_submodule("dw").input_quantizer is None
    # overrides come after first_last, so conv1 gets the Conv2d override
    assert q.bitsmith.report.kept_float == ["fc"]
    assert q.conv1.input_quantizer is None and q.conv1.weight_quantizer is not None


class Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.mean() > 0:
            y = self.a(x)
        else:
            y = self.b(x)
        return self.fc(y.mean((2, 3)))


def test_untraceable_model_falls_back_with_message(images):
    model = Branchy().eval()
    where = r"test_graph\.py:\d+ in forward: `if x.mean\(\) > 0:`"
    with pytest.warns(ConversionWarning, match=where):
        work, table, report = bitsmith.prepare(model, images.abs())
    assert not report.traced and "if x.mean() > 0" in report.summary()
    # only the branch that ran is in the table; the other is reported as unused
    assert table.names == ["a", "fc"] and table.unused == ["b"]
    with pytest.warns(ConversionWarning):
        q = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8),
                              calibration=[images.abs()])
    assert cosine(q(images.abs()), model(images.abs())) > 0.999


def test_error_paths(tiny_net, images):
    with pytest.raises(PolicyError, match="not found among the model's quantizable layers"):
        bitsmith.quantize(tiny_net, Policy.uniform(["conv9"]), example_inputs=images)
    with pytest.raises(CalibrationError, match="yielded no batch"):
        bitsmith.quantize(tiny_net, Policy.uniform(["fc"]), example_inputs=images,
                          calibration=[])
    with pytest.raises(CalibrationError, match="needs example_inputs"):
        bitsmith.quantize(tiny_net, Policy.uniform(["fc"]))
    q = bitsmith.quantize(tiny_net, Policy.uniform(["fc"], W8, A8), example_inputs=images)
    with pytest.raises(NotCalibratedError, match="fc.input: activation quantizer is not"):
        q(images)
    with pytest.raises(ConversionError, match="no quantizable layer"):
        bitsmith.prepare(nn.Sequential(nn.ReLU()), images)
    with pytest.raises(CalibrationError, match="NaN"):
        bitsmith.collect_stats(tiny_net, [torch.full_like(images, float("nan"))])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        bitsmith.prepare(lambda x: x, images)


def test_conv1d_convtranspose_and_shared_module():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3, padding=1)
            self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
            self.shared = nn.Linear(3, 3)

        def forward(self, x):
            y = self.c1(x).view(x.shape[0], 4, 2, -1)
            y = self.up(y).mean((2,)).transpose(1, 2)
            return self.shared(self.shared(y))

    model = Mixed().eval()
    x = torch.randn(4, 2, 8)
    table = LayerTable.from_model(model, x)
    assert table["shared"].calls == 2 and table["up"].type == "ConvTranspose2d"
    assert table["up"].weight_channel_axis == 1
    q = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8), calibration=[x])
    assert cosine(q(x), model(x)) > 0.999
    # per-channel activations on a Linear use the last axis
    act = QSpec("uniform_asymmetric", 8, "channel")
    q = bitsmith.quantize(model, Policy.uniform(table.names, W8, act), calibration=[x])
    assert q.shared.input_quantizer.p_scale.shape == (1, 1, 3)
    assert cosine(q(x), model(x)) > 0.999


def test_every_layer_float_policy_is_identity(tiny_net, images):
    q = bitsmith.quantize(tiny_net, Policy({"fc": FLOAT}), example_inputs=images)
    torch.testing.assert_close(q(images), tiny_net(images), atol=1e-5, rtol=1e-4)
