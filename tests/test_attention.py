"""Attention: nn.MultiheadAttention rewritten to explicit q/k/v/out Linear layers (same float
function), transformer fast paths removed, projections quantized and exported."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx
from bitsmith.graph.rewrite import ExplicitMultiheadAttention, rewrite_modules

pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)


def _inputs(batch_first: bool, kdim: int):
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 7, kdim), torch.randn(3, 7, kdim)
    return (q, k, v) if batch_first else (q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))


@pytest.mark.parametrize("batch_first, kdim, extras", list(itertools.product(
    [True, False], [16, 12], [False, True])))
def test_explicit_attention_computes_what_multihead_attention_computes(batch_first, kdim,
                                                                       extras):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim,
                                add_bias_kv=extras, add_zero_attn=extras).eval()
    explicit = ExplicitMultiheadAttention(mha).eval()
    q, k, v = _inputs(batch_first, kdim)
    padding = torch.rand(3, 7) > 0.7
    padding[:, 0] = False
    masks = [{}, {"key_padding_mask": padding}, {"attn_mask": torch.randn(5, 7)},
             {"attn_mask": torch.rand(5, 7) > 0.8, "key_padding_mask": padding},
             {"attn_mask": torch.randn(12, 5, 7)}]
    with torch.no_grad():
        for mask, need, average in itertools.product(masks, [True, False], [True, False]):
            ref = mha(q, k, v, need_weights=need, average_attn_weights=average, **mask)
            out = explicit(q, k, v, need_weights=need, average_attn_weights=average, **mask)
            assert torch.allclose(ref[0], out[0], atol=1e-5, equal_nan=True)
            if need:
                assert torch.allclose(ref[1], out[1], atol=1e-6, equal_nan=True)
            else:
                assert out[1] is None


def test_unbatched_and_causal_attention():
    mha = nn.MultiheadAttention(16, 4).eval()
    explicit = ExplicitMultiheadAttention(mha).eval()
    x = torch.randn(5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        for need in (True, False):
            ref = mha(x, x, x, attn_mask=causal, is_causal=True, need_weights=need)[0]
            assert torch.allclose(ref, explicit(x, x, x, attn_mask=causal, is_causal=True,
                                                need_weights=need)[0], atol=1e-5)
        with pytest.raises(RuntimeError, match="attn_mask"):
            explicit(x, x, x, is_causal=True)


class EncoderNet(nn.Module):
    """Embedding Linear, a 2-layer nn.TransformerEncoder (fast path eligible), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


@pytest.fixture
def encoder_net() -> nn.Module:
    return EncoderNet().eval()


def test_rewrite_keeps_the_encoder_function(encoder_net):
    names = [n for n, _ in rewrite_modules(EncoderNet())]
    assert "encoder" in names and "encoder.layers.0.self_attn" in names
    _, table, report = bitsmith.prepare(encoder_net, torch.randn(2, 6, 8))
    assert report.traced and report.rewritten
    x = torch.randn(4, 6, 8)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[1, 4:] = True
    work = bitsmith.prepare(encoder_net, x)[0]
    with torch.no_grad():
        assert torch.allclose(encoder_net(x), work(x), atol=1e-5)
        # the nested-tensor path of the original and the explicit layers agree too
        h = encoder_net.embed(x)
        assert torch.allclose(encoder_net.encoder(h, src_key_padding_mask=padding)[0],
                              work.encoder(h, src_key_padding_mask=padding)[0], atol=1e-5)
    projections = [n for n in table.names if "self_attn" in n]
    assert len(projections) == 8 and len(table) == 14  # q/k/v/out x 2, linear1/2 x 2, 2 more


def test_quantized_encoder_is_not_bypassed_by_the_fast_path(encoder_net):
    """Fails if the fast path (or anything) skips the quantized layers under no_grad."""
    calib = [torch.randn(8, 6, 8) for _ in range(3)]  # a loader: must calibrate every layer
    names = bitsmith.prepare(encoder_net, calib[0])[1].names
    w8 = bitsmith.quantize(encoder_net, Policy.uniform(names, W8, A8), calibration=calib)
    w4 = bitsmith.quantize(encoder_net, Policy.uniform(names, W8.replace(bits=4), A8),
                           calibration=calib)
    x = torch.randn(4, 6, 8)
    with torch.no_grad():
        ref, out8, out4 = encoder_net(x), w8(x), w4(x)
    assert not torch.equal(out8, ref) and not torch.equal(out4, out8)
    assert torch.allclose(out8, ref, atol=0.05 * float(ref.abs().max()))
    # every projection really quantizes: its quantizers saw data and hold parameters
    for name in names:
        layer = w8.get_submodule(name)
        assert layer.input_quantizer.ready and layer.weight_quantizer is not None


def test_encoder_exports_every_projection_as_an_integer_kernel(tmp_path, encoder_net):
    calib = [torch.randn(8, 6, 8) for _ in range(2)]
    names = bitsmith.prepare(encoder_net, calib[0])[1].names
    q = bitsmith.quantize(encoder_net, Policy.uniform(names, W8, A8), calibration=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bitsmith.export.errors.ExportWarning)  # traced model
        report = export_onnx(q, tmp_path / "enc.onnx", calib[0][:1], calibration=calib)
    assert report.integer_layers == len(names) and report.float_layers == 0
    assert report.layers["encoder.layers.0.self_attn.q_proj"] == "MatMulIntegerToFloat"
    assert report.layers["head"] == "QGemm"
    assert report.kernels["integer"] == len(names)
    assert report.kernels["float"] == 4  # attention's Q·K and P·V MatMuls, 2 per layer
    agreement = compare_onnx(q, tmp_path / "enc.onnx", [torch.randn(16, 6, 8)])
    assert agreement.top1_agreement == 100.0 and agreement.max_abs_error < 1e-3
