"""Power-of-two (logarithmic) levels: ``pot`` ("PotQ" in AutoQNN).

Levels, for ``b`` bits and a clipping threshold ``α``::

    {0} ∪ {±α · 2^(-j) : j = 0 .. 2^(b-1) - 2}        (2^b - 1 values)

``x`` is clipped to ``[-α, α]``; its magnitude relative to ``α``,
``a = |x_c| / α``, goes to the nearest level in the log domain,
``2^clamp(round(log2 a), -(J), 0)`` with ``J = 2^(b-1) - 2``, and magnitudes
below half the smallest level (``a < 2^(-J-1)``) go to 0::

    x̂ = sign(x) · α · 2^e   (or 0)

Multiplying by a level is a bit shift, which is the point of the scheme
(Miyashita et al., "Convolutional Neural Networks using Logarithmic Data
Representation", 2016; Zhou et al., "Incremental Network Quantization",
ICLR 2017). AutoQNN (Gong et al., JCST 2024) lists a power-of-two quantizer
among its candidates without giving every detail; this module's choices (one
zero level, ``2^(b-1) - 1`` magnitudes, rounding in the log domain, the
half-smallest-level dead zone) are this project's interpretation.

Range-based and symmetric: ``α = max(|lo|, |hi|)``. Not an integer grid (the
levels are not equally spaced). Gradient: straight-through identity for
``|x| <= α``, zero outside.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes._common import TINY, upcast
from bitsmith.schemes.base import Params, Scheme, SpecLike, register


def pot_exponents(bits: int) -> int:
    """Number of nonzero magnitudes ``2^(b-1) - 1`` (exponents ``j = 0 .. 2^(b-1) - 2``)."""
    return 2 ** (bits - 1) - 1


@register
class PowerOfTwo(Scheme):
    """Zero plus signed power-of-two fractions of ``α`` (``pot``, 2..8 bits).

    Params: ``alpha`` (clipping threshold, shape ``(1,)*ndim`` or per channel).
    """

    name = "pot"
    min_bits, max_bits = 2, 8

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        """``{"alpha": max(|lo|, |hi|)}`` (shape of ``lo``)."""
        return {"alpha": torch.maximum(lo.abs(), hi.abs())}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Nearest power-of-two level in the log domain; same shape as ``x``."""
        xf, alpha = upcast(x, params["alpha"])
        j_max = pot_exponents(bits) - 1
        xc = torch.clamp(xf, -alpha, alpha)
        a = (xc.abs() / alpha.clamp_min(TINY)).detach()
        e = torch.round(torch.log2(a.clamp_min(TINY))).clamp(-j_max, 0)
        keep = a >= 2.0 ** (-j_max - 1)
        level = torch.sign(xc.detach()) * alpha.detach() * torch.exp2(e)
        hard = torch.where(keep, level, torch.zeros_like(level))
        return (xc + (hard - xc).detach()).to(x.dtype)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("alpha",)

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Code 0 is the zero level; ``1 + j`` is ``+α·2^-j``, ``J + 2 + j`` is ``-α·2^-j``."""
        xf, alpha = upcast(x.detach(), params["alpha"].detach())
        j_max = pot_exponents(bits) - 1
        xc = torch.clamp(xf, -alpha, alpha)
        a = xc.abs() / alpha.clamp_min(TINY)
        j = -torch.round(torch.log2(a.clamp_min(TINY))).clamp(-j_max, 0)
        keep = a >= 2.0 ** (-j_max - 1)
        code = torch.where(xc > 0, 1 + j, j_max + 2 + j)
        return torch.where(keep, code, torch.zeros_like(code)).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        """``sign · α · 2^e`` (the product :meth:`quantize` computes), 0 for code 0."""
        alpha = params["alpha"].detach().to(torch.float32)
        j_max = pot_exponents(bits) - 1
        c = codes.to(torch.float32)
        negative = c >= j_max + 2
        e = torch.where(negative, -(c - j_max - 2), -(c - 1))
        sign = torch.where(negative, -torch.ones_like(c), torch.ones_like(c))
        level = sign * alpha * torch.exp2(e)
        return torch.where(codes == 0, torch.zeros_like(level), level)

    def lattice(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int] | None:
        """``α·2^-J`` steps hold every level when ``2^J <= 127`` (bits <= 4), else ``None``."""
        j_max = pot_exponents(bits) - 1
        if 2 ** j_max > 127:
            return None
        scale = params["alpha"].detach().to(torch.float32) * 2.0 ** -j_max
        return scale, torch.zeros_like(scale), -(2 ** j_max), 2 ** j_max
