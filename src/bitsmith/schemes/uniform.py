"""Uniform integer-grid schemes: the ones integer runtimes (ONNX QDQ) execute.

``uniform_symmetric``:  ``q = clamp(round(x / s), -Q, Q)``, ``x̂ = s·q`` with
``Q = 2^(b-1) - 1`` (narrow signed range, zero point 0) and
``s = max(|lo|, |hi|) / Q``.

``uniform_asymmetric``: ``q = clamp(round(x / s) + z, 0, 2^b - 1)``,
``x̂ = s·(q - z)`` with ``s = (hi - lo) / (2^b - 1)`` and the integer zero point
``z = clamp(round(-lo / s), 0, 2^b - 1)``; the range is first widened to
contain 0 so that zero (padding, ReLU output) is exact.

Both take ``reduced_range`` (one bit less of range, for ONNX Runtime's AVX2
u8s8 kernels) and ``pow2_scale`` (scale rounded up to a power of two) from the
QSpec. Gradients: straight-through for ``round``, so the scale gets the
learned-step-size (LSQ / LSQ+) gradient when it is trainable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes.base import Params, Scheme, SpecLike, register, round_ste

_TINY = 1e-12


def pow2_ceil(scale: Tensor) -> Tensor:
    """Smallest power of two >= ``scale`` (elementwise, ``scale > 0``)."""
    return torch.exp2(torch.ceil(torch.log2(scale.clamp_min(_TINY))))


def effective_bits(bits: int, reduced_range: bool) -> int:
    """Bits of integer range actually used (one fewer with ``reduced_range``)."""
    return max(bits - 1, 1) if reduced_range else bits


@register
class UniformSymmetric(Scheme):
    """Signed symmetric uniform quantizer with zero point 0 (``uniform_symmetric``)."""

    name = "uniform_symmetric"
    min_bits, max_bits = 2, 16
    integer_grid = True

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        # max(.., 1): 2 bits with reduced_range would leave qmax = 0 (scale = inf / NaN).
        qmax = max(2 ** (effective_bits(bits, spec.reduced_range) - 1) - 1, 1)
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / qmax).clamp_min(_TINY)
        if spec.pow2_scale:
            scale = pow2_ceil(scale)
        return {"scale": scale, "qmax": torch.full_like(scale, float(qmax))}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        scale, qmax = params["scale"], params["qmax"]
        # Clamp, then round (same values, as the bounds are integers): clamping the
        # rounded value would hit the bounds exactly and halve the STE gradient there.
        q = round_ste(torch.clamp(x / scale, -qmax, qmax))
        return (q * scale).to(x.dtype)  # float32 params must not promote a half input

    def grid(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int]:
        qmax = int(params["qmax"].max().item())
        return params["scale"], torch.zeros_like(params["scale"]), -qmax, qmax

    def learnable_keys(self) -> tuple[str, ...]:
        return ("scale",)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("scale",)


@register
class UniformAsymmetric(Scheme):
    """Unsigned asymmetric uniform quantizer with an integer zero point (``uniform_asymmetric``)."""

    name = "uniform_asymmetric"
    min_bits, max_bits = 1, 16
    integer_grid = True
    symmetric = False
    zero_point_bytes = 1

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        qmax = 2 ** effective_bits(bits, spec.reduced_range) - 1
        lo = torch.minimum(lo, torch.zeros_like(lo))
        hi = torch.maximum(hi, torch.zeros_like(hi))
        scale = ((hi - lo) / qmax).clamp_min(_TINY)
        if spec.pow2_scale:
            scale = pow2_ceil(scale)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
        return {"scale": scale, "zero_point": zero_point,
                "qmax": torch.full_like(scale, float(qmax))}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        scale, zp, qmax = params["scale"], params["zero_point"], params["qmax"]
        zp = round_ste(zp)  # stays integer when learned (LSQ+ offset)
        # q - zp = clamp(round(x / s), -zp, qmax - zp), rounded after clamping (see above).
        q = round_ste(torch.clamp(x / scale, -zp, qmax - zp))
        return (q * scale).to(x.dtype)

    def grid(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int]:
        qmax = int(params["qmax"].max().item())
        return params["scale"], params["zero_point"], 0, qmax

    def learnable_keys(self) -> tuple[str, ...]:
        return ("scale", "zero_point")

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("scale",)  # plus the 1-byte integer zero point
