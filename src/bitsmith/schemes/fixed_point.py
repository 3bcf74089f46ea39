"""Fixed-point numbers: ``fixed_point``, signed symmetric uniform with a power-of-two step.

For ``b`` bits, ``Q = 2^(b-1) - 1`` and ``amax = max(|lo|, |hi|)``::

    s = 2^ceil(log2(amax / Q)),     q = clamp(round(x / s), -Q, Q),     x̂ = s · q

so ``x̂`` is a ``b``-bit two's-complement integer with ``-log2(s)`` fractional
bits (the ``Q·f`` fixed-point format of DSPs and of Gupta et al., "Deep
Learning with Limited Numerical Precision", ICML 2015). The step is the
smallest power of two that still covers ``[-amax, amax]``. Rescaling is a
shift, and the scheme is an integer grid (zero point 0).

It is the same map as ``uniform_symmetric`` with ``pow2_scale=True``, kept as
its own scheme because AutoQNN's candidate set names it. ``reduced_range`` is
honoured (one bit less of integer range, at least ``Q = 1``). Range-based.
Gradient: straight-through for ``round``; the step is not trainable (it
must stay a power of two).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes._common import upcast
from bitsmith.schemes.base import Params, Scheme, SpecLike, register, round_ste
from bitsmith.schemes.uniform import effective_bits, pow2_ceil


@register
class FixedPoint(Scheme):
    """Signed fixed point, step ``2^ceil(log2(amax / Q))`` (``fixed_point``, 2..8 bits).

    Params: ``scale`` (a power of two) and ``qmax`` (``Q``), shape of ``lo``.
    """

    name = "fixed_point"
    min_bits, max_bits = 2, 8
    integer_grid = True

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        """``{"scale", "qmax"}`` for the range ``[lo, hi]`` (shape of ``lo``)."""
        qmax = max(2 ** (effective_bits(bits, spec.reduced_range) - 1) - 1, 1)
        lo, hi = upcast(lo, hi)  # 2^-40 and the like underflow in float16
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = pow2_ceil(amax / qmax)
        return {"scale": scale, "qmax": torch.full_like(scale, float(qmax))}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """``s · clamp(round(x / s), -Q, Q)``; same shape as ``x``."""
        xf, scale, qmax = upcast(x, params["scale"], params["qmax"])
        return (round_ste(torch.clamp(xf / scale, -qmax, qmax)) * scale).to(x.dtype)

    def grid(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int]:
        """``(scale, 0, -Q, Q)``."""
        qmax = int(params["qmax"].max().item())
        return params["scale"], torch.zeros_like(params["scale"]), -qmax, qmax

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("scale",)
