"""AdaRound's soft rounding on a scheme's integer grid, and its annealed regulariser.

A uniform integer-grid weight quantizer (``Scheme.grid``: scale ``s``, zero point
``z``, integer range ``[qmin, qmax]``, all broadcastable to the weight ``W``) rounds to
the nearest grid point. Soft rounding keeps the floor and learns the step up::

    W̃ = s · (clamp(⌊W / s⌋ + z + h(V), qmin, qmax) − z)
    h(V) = clamp(σ(V) · (ζ − γ) + γ, 0, 1)          (rectified sigmoid, ζ = 1.1, γ = −0.1)

``V`` (one variable per weight) starts where ``h(V)`` equals the fractional part of
``W / s`` (so the soft weight starts at the float weight, up to clipping). The
regulariser ``f(V) = Σ 1 − |2 h(V) − 1|^β`` pushes every ``h`` to 0 or 1 as ``β``
anneals from large (only values near 0.5 are pushed) to small. The final, hard weight
uses ``h = [V ≥ 0]``: the product ``(q − z) · s`` is computed exactly as the scheme's
own ``quantize`` computes it, so the weight lies on the grid bit for bit and the
packed and ONNX exports reproduce it.

Shapes: ``W`` ``(C_out, ...)``; ``s``, ``z`` ``(C_out, 1, ...)`` per channel or all
ones per tensor. Everything is elementwise, so it is vectorised over channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bitsmith.graph.quantizer import Quantizer

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class WeightGrid:
    """The integer grid of one weight quantizer: ``value = scale · (q − zero_point)``."""

    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int

    @classmethod
    def of(cls, quantizer: Quantizer, weight: Tensor) -> WeightGrid:
        """The grid that ``quantizer`` (range-based, integer grid) uses for ``weight``.

        Runs the quantizer once so that its parameters are fitted to ``weight``.
        """
        scheme = quantizer.scheme
        if not (scheme.integer_grid and scheme.range_based):
            raise ValueError(f"{quantizer.label}: scheme {scheme.name!r} has no uniform "
                             "integer grid; learned rounding does not apply")
        with torch.no_grad():
            quantizer(weight.detach())
        scale, zp, qmin, qmax = scheme.grid(quantizer.params(), quantizer.spec.bits)
        return cls(scale.detach().float(), torch.round(zp.detach().float()), int(qmin),
                   int(qmax))

    def value(self, q: Tensor) -> Tensor:
        """Float32 weight of integer grid values ``q`` (the scheme's own product)."""
        return (q - self.zero_point) * self.scale

    def nearest(self, weight: Tensor) -> Tensor:
        """Round-to-nearest integer grid values of ``weight``."""
        q = torch.round(weight.detach().float() / self.scale) + self.zero_point
        return torch.clamp(q, self.qmin, self.qmax)


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)``, elementwise."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in [0, 1) (AdaRound's initialisation)."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def rounding_regularizer(h: Tensor, beta: float) -> Tensor:
    """``Σ 1 − |2h − 1|^β``: zero when every ``h`` is 0 or 1, largest at ``h = 0.5``."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def annealed_beta(step: int, total: int, warmup: float, start: float, end: float
                  ) -> float | None:
    """``β`` at ``step`` of ``total``: ``None`` during the warm-up (no regulariser), then a
    cosine decay from ``start`` to ``end`` over the remaining steps."""
    first = int(warmup * total)
    if step < first:
        return None
    rel = (step - first) / max(total - first, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(rel * math.pi))


class SoftRounding(nn.Module):
    """A layer's weight quantizer during reconstruction (see the module docstring).

    ``forward(w)`` ignores ``w`` (the float weight is captured at construction) and
    returns the soft weight, or the hard one after :meth:`harden`. ``mask`` (optional,
    0/1 like the weight) keeps pruned weights at exactly zero.
    """

    base: Tensor  # buffers, registered in __init__
    mask: Tensor | None

    def __init__(self, weight: Tensor, grid: WeightGrid, mask: Tensor | None = None) -> None:
        super().__init__()
        self.grid = grid
        ratio = weight.detach().float() / grid.scale
        floor = torch.floor(ratio)
        self.register_buffer("base", floor + grid.zero_point)
        frac = (ratio - floor).clamp(0.0, 1.0 - 1e-6)
        self.v = nn.Parameter(inverse_rectified_sigmoid(frac))
        self.register_buffer("mask", mask)
        self.hard = False

    def h(self) -> Tensor:
        return rectified_sigmoid(self.v)

    def codes(self) -> Tensor:
        """Hard integer grid values ``q`` (float tensor of integers), the weight's shape."""
        with torch.no_grad():
            return torch.clamp(self.base + (self.v >= 0).float(), self.grid.qmin, self.grid.qmax)

    def harden(self) -> None:
        """From now on ``forward`` returns the hard weight."""
        self.hard = True

    def forward(self, _weight: Tensor | None = None) -> Tensor:
        q = self.codes() if self.hard else torch.clamp(self.base + self.h(), self.grid.qmin,
                                                       self.grid.qmax)
        w = self.grid.value(q)
        return w if self.mask is None else w * self.mask

    def regularizer(self, beta: float) -> Tensor:
        h = self.h()
        if self.mask is not None:
            h = torch.where(self.mask > 0, h, torch.zeros_like(h))
        return rounding_regularizer(h, beta)

    def hard_weight(self) -> Tensor:
        """The final weight: ``(q − z) · s`` with the hard codes (zeros kept where masked)."""
        with torch.no_grad():
            w = self.grid.value(self.codes())
            return w if self.mask is None else torch.where(self.mask > 0, w, torch.zeros_like(w))
