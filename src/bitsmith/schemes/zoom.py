"""Min–max "zoom" quantizer: ``zoomq`` ("ZoomQ" in AutoQNN).

Each group (the tensor, or one channel) is zoomed into ``[0, 1]`` by its own
current minimum ``m`` and maximum ``M``, quantized to ``L = 2^b - 1`` equal
steps and zoomed back::

    x̂ = round((x - m) / (M - m) · L) / L · (M - m) + m

The endpoints ``m`` and ``M`` are reproduced exactly. This is the min–max
asymmetric quantizer of DoReFa-Net's weight path (Zhou et al. 2016) and of
"Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (Jacob et al., CVPR 2018), but with a
float offset ``m`` rather than an integer zero point, so 0 is generally not a
level and the scheme is not an integer grid. AutoQNN (Gong et al., JCST 2024)
names ZoomQ among its candidates; reading it as this per-call min–max
zoom is this project's interpretation.

Data-driven (``m``, ``M`` recomputed from every tensor), not symmetric for
fixed parameters, two floats per group. Gradient: straight-through for
``round``, identity inside ``[m, M]``; ``m`` and ``M`` are differentiable
(:func:`torch.amin` / :func:`torch.amax` send it to the extreme elements).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes._common import TINY, compute_dtype, upcast
from bitsmith.schemes.base import (
    Params,
    TwoStatisticScheme,
    reduce_dims,
    register,
    round_ste,
)


@register
class ZoomQ(TwoStatisticScheme):
    """Asymmetric min–max uniform quantizer with a float offset (``zoomq``, 1..8 bits).

    Params: ``lo`` (group minimum ``m``) and ``hi`` (group maximum ``M``), each
    of shape ``broadcast_shape(x, axis)``.
    """

    name = "zoomq"

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """``{"lo": min, "hi": max}`` per group, keepdim."""
        dims = reduce_dims(x, axis)
        x = x.to(compute_dtype(x))
        return {"lo": x.amin(dim=dims, keepdim=True), "hi": x.amax(dim=dims, keepdim=True)}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Zoom to ``[0, 1]``, round to ``2^b - 1`` steps, zoom back; same shape as ``x``."""
        xf, lo, hi = upcast(x, params["lo"], params["hi"])
        levels = float(2 ** bits - 1)
        span = hi - lo
        u = (xf - lo) / span.clamp_min(TINY) * levels
        q = round_ste(u.clamp(0.0, levels))  # clamp first: full STE gradient at the ends
        return (q / levels * span + lo).to(x.dtype)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("lo", "hi")

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """``round((x - m) / (M - m) · L)`` in ``[0, L]``."""
        xf, lo, hi = upcast(x.detach(), params["lo"].detach(), params["hi"].detach())
        levels = float(2 ** bits - 1)
        u = (xf - lo) / (hi - lo).clamp_min(TINY) * levels
        return torch.round(u.clamp(0.0, levels)).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        lo = params["lo"].detach().to(torch.float32)
        hi = params["hi"].detach().to(torch.float32)
        levels = float(2 ** bits - 1)
        return codes.to(torch.float32) / levels * (hi - lo) + lo
