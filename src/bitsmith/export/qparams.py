"""Integer-grid parameters of one tensor as ONNX QuantizeLinear / DequantizeLinear see them.

The ONNX export keeps activations in **uint8** (ONNX Runtime's fast u8s8
kernels) and weights in **int8** (zero point 0). A bitsmith grid that is
narrower than the storage type (fewer bits, ``reduced_range``, the symmetric
``[-Q, Q]`` range) keeps its exact clamp through ``qmin``/``qmax``: the export
adds a ``Clip`` before ``QuantizeLinear`` where the storage type's saturation
would be wider.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitsmith.export.errors import ExportError
from bitsmith.graph.qmodules import QuantizedLayer
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import QSpec
from bitsmith.schemes import get_scheme

_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


@dataclass(frozen=True)
class ActQParams:
    """Per-tensor activation grid ``x̂ = scale · (q − zero_point)``, uint8 ``q ∈ [qmin, qmax]``."""

    scale: float
    zero_point: int
    qmin: int = 0
    qmax: int = 255
    source: str = "simulation"  # or "calibrated" (an extra point the runtime needs)

    @property
    def needs_clip(self) -> bool:
        """True when the grid is narrower than uint8's saturation range."""
        return (self.qmin, self.qmax) != _RANGES["uint8"]

    @property
    def clip_range(self) -> tuple[float, float]:
        """Float bounds ``scale · (qmin − zp)``, ``scale · (qmax − zp)`` (float32 arithmetic)."""
        s = np.float32(self.scale)
        return (float(s * np.float32(self.qmin - self.zero_point)),
                float(s * np.float32(self.qmax - self.zero_point)))

    def key(self) -> tuple:
        return (np.float32(self.scale).item(), self.zero_point, self.qmin, self.qmax)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin,
                "qmax": self.qmax, "source": self.source}


def act_qparams(where: str, quantizer: Quantizer) -> ActQParams:
    """The uint8 grid of a calibrated per-tensor activation quantizer; ExportError otherwise."""
    spec = quantizer.spec
    scheme = get_scheme(spec.scheme)
    if not scheme.integer_grid:
        raise ExportError(
            f"{where}: activation scheme {spec.scheme!r} is not an integer grid; ONNX QDQ can "
            "only hold uniform activation quantizers (uniform_asymmetric, uniform_symmetric, "
            "fixed_point, clipq)")
    if quantizer.axis is not None:
        raise ExportError(f"{where}: per-channel activation quantization has no integer kernel "
                          "in ONNX Runtime; use granularity='tensor' for activations")
    if spec.bits > 8:
        raise ExportError(f"{where}: {spec.bits}-bit activations do not fit ONNX's 8-bit "
                          "QuantizeLinear; use at most 8 bits")
    if not quantizer.ready:
        raise ExportError(f"{where}: the activation quantizer is not calibrated")
    scale, zp, qmin, qmax = scheme.grid(quantizer.params(), spec.bits)
    scale_f = float(scale.reshape(-1)[0])
    zp_i = int(torch.round(zp.reshape(-1)[0]).item())
    if qmin < 0:  # signed grid: shift into uint8 (same values, u8s8 kernels)
        zp_i, qmin, qmax = zp_i + 128, qmin + 128, qmax + 128
    if not (0 <= qmin <= zp_i <= qmax <= 255):
        raise ExportError(f"{where}: activation grid [{qmin}, {qmax}] with zero point {zp_i} "
                          "does not fit uint8")
    return ActQParams(scale_f, zp_i, qmin, qmax)


def calibrated_qparams(lo: float, hi: float) -> ActQParams:
    """uint8 asymmetric grid for a min/max range (bitsmith's ``uniform_asymmetric`` at 8 bits)."""
    scheme = get_scheme("uniform_asymmetric")
    spec = QSpec("uniform_asymmetric", 8)
    p = scheme.params_from_range(torch.tensor([lo]), torch.tensor([hi]), 8, spec)
    return ActQParams(float(p["scale"][0]), int(p["zero_point"][0]), 0, 255, "calibrated")


@dataclass
class WeightQParams:
    """An integer weight: ``W = scale[c] · (q − zero_point[c])`` exactly (float32)."""

    q: np.ndarray  # int8 or uint8, the weight's shape
    scale: np.ndarray  # float32, (C,) or scalar
    zero_point: np.ndarray  # same dtype as q, shape of scale
    axis: int | None
    bits: int
    lattice: tuple[int, int]  # (qmin, qmax) used by the scheme


def weight_qparams(layer: QuantizedLayer) -> WeightQParams | None:
    """The exact 8-bit integer form of a quantized layer's weight, or ``None`` if it has none.

    Uses the scheme's :meth:`~bitsmith.schemes.Scheme.lattice` (integer-grid schemes, and
    binary / ternary / low-bit power-of-two, whose levels lie on a grid) and checks that
    ``scale · (q − zp)`` reproduces the simulated weight bit for bit.
    """
    wq = layer.weight_quantizer
    if wq is None or wq.block_size is not None:  # block-wise: see nbits_weight
        return None
    spec = wq.spec
    scheme = get_scheme(spec.scheme)
    with torch.no_grad():
        w_hat = layer.quantized_weight().detach().to(torch.float32)
        params = (wq.params() if scheme.range_based
                  else scheme.params_from_data(layer.weight.detach(), spec.bits, wq.axis))
        lattice = scheme.lattice(params, spec.bits)
        if lattice is None:
            return None
        scale, zp, qmin, qmax = lattice
        scale = scale.to(torch.float32)
        zp = torch.round(zp.to(torch.float32))
        q = torch.round(w_hat / scale) + zp
        if qmin >= -128 and qmax <= 127 and bool((zp == 0).all()):
            dtype = np.int8
        elif qmin >= 0 and qmax <= 255:
            dtype = np.uint8
        else:
            return None
        if not torch.equal((q - zp) * scale, w_hat) or q.min() < qmin or q.max() > qmax:
            return None
    flat_scale = scale.reshape(-1).numpy().astype(np.float32)
    flat_zp = zp.reshape(-1).numpy().astype(dtype)
    if wq.axis is None:
        flat_scale, flat_zp = flat_scale.reshape(()), flat_zp.reshape(())
    return WeightQParams(q.numpy().astype(dtype), flat_scale, flat_zp,
                         None if wq.axis is None else wq.axis % w_hat.dim(), spec.bits,
                         (qmin, qmax))


#: bit widths ONNX Runtime's CPU ``MatMulNBits`` kernels run (codes packed LSB first)
NBITS = (2, 4, 8)


def int32_bias(bias: np.ndarray, act: ActQParams, weight: WeightQParams
               ) -> tuple[np.ndarray, np.ndarray]:
    """A layer's bias as ``QLinearConv`` / ``QGemm`` take it: int32 codes at ``s_in · s_w``.

    Args:
        bias: float bias, shape ``(out,)``.
        act: the layer's input grid; weight: its integer weight (scalar or per-channel scale).

    Returns:
        ``(codes, scale)``: int32 codes and float32 scales, both of shape ``(out,)``; the
        runtime adds ``codes · scale`` (the bias rounded to half an accumulator step).
    """
    scale = (np.float32(act.scale) * weight.scale).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    codes = np.clip(np.round(bias.astype(np.float64) / scale), -2 ** 31, 2 ** 31 - 1)
    return codes.astype(np.int32), scale


@dataclass
class NBitsWeight:
    """A block-wise Linear weight in ONNX Runtime's ``MatMulNBits`` layout.

    ``packed``: uint8 ``(N, blocks, block · bits / 8)``; ``scales``: float32 ``(N · blocks,)``;
    ``zero_points``: packed uint8 ``(N · ceil(blocks · bits / 8),)`` or ``None`` (ORT's default
    ``2^(bits-1)``, used for symmetric grids). ``W[n, k] = scale · (code − zero_point)``.
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    bits: int
    block: int


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of ``codes`` (values < 2^bits) LSB first into uint8."""
    per = 8 // bits
    pad = (-codes.shape[-1]) % per
    if pad:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), codes.dtype)], -1)
    grouped = codes.reshape(*codes.shape[:-1], -1, per).astype(np.uint16)
    shifts = (np.arange(per) * bits).astype(np.uint16)
    return (grouped << shifts).sum(-1).astype(np.uint8)


def nbits_weight(layer: QuantizedLayer) -> NBitsWeight | None:
    """The ``MatMulNBits`` form of a Linear layer's block-wise weight, or ``None`` when it has
    none (not a Linear, not block-wise, a bit width ORT's CPU kernels lack, or levels off an
    integer grid). Checked: the codes reproduce the simulated weight bit for bit."""
    wq = layer.weight_quantizer
    if (wq is None or wq.block_size is None or not isinstance(layer, nn.Linear)
            or wq.spec.bits not in NBITS):
        return None
    from bitsmith.schemes.blocks import to_blocks

    spec, block = wq.spec, wq.block_size
    scheme = get_scheme(spec.scheme)
    with torch.no_grad():
        w_hat = to_blocks(layer.quantized_weight().detach().to(torch.float32), block)
        params = (wq.params() if scheme.range_based
                  else scheme.params_from_data(to_blocks(layer.weight.detach(), block),
                                               spec.bits, 0))
        lattice = scheme.lattice(params, spec.bits)
        if lattice is None:
            return None
        scale, zp, qmin, qmax = lattice
        scale = scale.to(torch.float32).reshape(-1, 1)
        zp = torch.round(zp.to(torch.float32)).expand_as(scale)
        q = torch.round(w_hat / scale) + zp
        if not torch.equal((q - zp) * scale, w_hat):
            return None
    n, k = layer.weight.shape
    top = 2 ** spec.bits - 1
    if bool((zp == 0).all()) and qmin >= -(2 ** (spec.bits - 1)) and qmax <= top // 2:
        codes, zero_points = q + 2 ** (spec.bits - 1), None  # ORT's default zero point
    elif qmin >= 0 and qmax <= top and bool(((zp >= 0) & (zp <= top)).all()):
        codes = q
        per_channel = zp[:, 0].reshape(n, -1).numpy().astype(np.uint8)
        zero_points = _pack_codes(per_channel, spec.bits).reshape(-1)
    else:
        return None
    blocks = codes.numpy().astype(np.uint8).reshape(n, -1, block)
    return NBitsWeight(_pack_codes(blocks, spec.bits), scale.reshape(-1).numpy(), zero_points,
                       k, n, spec.bits, block)
