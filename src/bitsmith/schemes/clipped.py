"""Learnable clipping: ``clipq`` ("ClipQ" in AutoQNN), PACT-style symmetric uniform.

For ``b`` bits, ``Q = 2^(b-1) - 1`` and a clipping threshold ``α > 0``::

    x_c = clamp(x, -α, α),    x̂ = round(x_c · Q / α) · α / Q

i.e. a symmetric integer grid with scale ``α / Q`` and zero point 0 whose
clipping threshold is trained. ``α`` starts at ``max(|lo|, |hi|)`` of the
calibrated range. Gradients (straight-through ``round``):

* to ``x``: 1 inside ``[-α, α]``, 0 outside (the clip);
* to ``α``: ``sign(x)`` from every clipped element (PACT, Choi et al. 2018,
  extended to signed inputs) plus ``(round(v) - v) / Q`` with
  ``v = x · Q / α`` from every element inside the range (the LSQ step-size
  term, Esser et al. 2020, which appears because ``α`` also sets the step).

AutoQNN (Gong et al., JCST 2024) names a clipping quantizer among its
candidates; the exact formulation above (symmetric, PACT threshold trained
with the full straight-through gradient) is this project's interpretation.
``reduced_range`` and ``pow2_scale`` (``α / Q`` rounded up to a power of two)
are honoured as in ``uniform_symmetric``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes._common import TINY, upcast
from bitsmith.schemes.base import Params, Scheme, SpecLike, register, round_ste
from bitsmith.schemes.uniform import effective_bits, pow2_ceil


@register
class ClipQ(Scheme):
    """Symmetric uniform quantizer with a learnable clipping threshold (``clipq``, 2..8 bits).

    Params: ``alpha`` (threshold) and ``qmax`` (``Q``), shape of ``lo``.
    """

    name = "clipq"
    min_bits, max_bits = 2, 8
    integer_grid = True

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        """``{"alpha": max(|lo|, |hi|), "qmax": Q}`` (shape of ``lo``)."""
        qmax = max(2 ** (effective_bits(bits, spec.reduced_range) - 1) - 1, 1)
        lo, hi = upcast(lo, hi)
        alpha = torch.maximum(lo.abs(), hi.abs())
        if spec.pow2_scale:
            alpha = pow2_ceil(alpha / qmax) * qmax
        return {"alpha": alpha, "qmax": torch.full_like(alpha, float(qmax))}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """``round(clamp(x, -α, α) / s) · s`` with ``s = α / Q``; same shape as ``x``."""
        xf, alpha, qmax = upcast(x, params["alpha"], params["qmax"])
        alpha = alpha.clamp_min(TINY)
        step = alpha / qmax
        xc = torch.clamp(xf, -alpha, alpha)
        return (round_ste(xc / step) * step).to(x.dtype)

    def grid(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int]:
        """``(α / Q, 0, -Q, Q)``."""
        qmax = int(params["qmax"].max().item())
        scale = params["alpha"].clamp_min(TINY) / params["qmax"]
        return scale, torch.zeros_like(scale), -qmax, qmax

    def learnable_keys(self) -> tuple[str, ...]:
        return ("alpha",)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("alpha",)
