"""Statistics-normalised uniform quantizer: ``mu_l2q`` (μL2Q, Gong et al. 2019).

μL2Q ("μL2Q: An Ultra-Low Loss Quantization Method for DNN Compression",
Gong et al., IJCNN 2019) assumes the values of a group are roughly Gaussian.
It normalises them by their mean ``μ`` and standard deviation ``σ`` and
applies the uniform quantizer that is L2-optimal for a standard normal
variable: for ``b`` bits, ``N = 2^(b-1)`` and the optimal step ``Δ_b``::

    z = (x - μ) / σ
    k = clamp(floor(z / Δ_b), -N, N - 1)
    x̂ = (k + 1/2) · Δ_b · σ + μ           (2^b mid-rise levels)

``Δ_b`` minimises ``E[(z - Q(z))^2]`` for ``z ~ N(0, 1)`` (Max, "Quantizing
for Minimum Distortion", IRE Trans. IT 1960, table of optimum uniform
quantizers: 1.596, 0.9957, 0.5860, 0.3352 for 1..4 bits). It is computed once
per bit width from the closed-form expectation (:func:`gaussian_uniform_mse`)
and cached (:func:`gaussian_optimal_step`).

Data-driven (``μ``, ``σ`` recomputed from every tensor, population std),
two floats per group, not symmetric for fixed parameters (``μ`` shifts the
levels), not an integer grid (the offset ``μ`` is a float). A group with
``σ = 0`` (e.g. a dead channel) is reproduced exactly. Gradient:
straight-through identity for ``|z| <= N·Δ_b`` (the overload points, half a
step beyond the outermost levels), zero beyond; ``μ`` and ``σ`` are
differentiable.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from bitsmith.schemes._common import TINY, compute_dtype, upcast
from bitsmith.schemes.base import Params, TwoStatisticScheme, reduce_dims, register


def gaussian_uniform_mse(step: float, bits: int) -> float:
    """``E[(z - Q(z))^2]`` for ``z ~ N(0, 1)`` and the ``2^bits``-level mid-rise quantizer.

    Closed form per cell ``[a, b)`` with level ``c``:
    ``(1 + c²)(Φ(b) - Φ(a)) - (b φ(b) - a φ(a)) - 2c (φ(a) - φ(b))``.
    """
    from scipy.special import ndtr

    n = 2 ** (bits - 1)
    k = np.arange(-n, n, dtype=np.float64)
    lo, hi = k * step, (k + 1) * step
    lo[0], hi[-1] = -np.inf, np.inf
    c = (k + 0.5) * step

    def pdf(t: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * np.square(t)) / math.sqrt(2.0 * math.pi)

    def t_pdf(t: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(t), np.nan_to_num(t) * pdf(t), 0.0)

    mass = ndtr(hi) - ndtr(lo)
    terms = (1.0 + c * c) * mass - (t_pdf(hi) - t_pdf(lo)) - 2.0 * c * (pdf(lo) - pdf(hi))
    return float(terms.sum())


@functools.cache
def gaussian_optimal_step(bits: int) -> float:
    """The step ``Δ_b`` of the MSE-optimal ``2^bits``-level uniform quantizer of ``N(0, 1)``.

    A coarse grid search brackets the minimum, then Brent's bounded method
    refines it; the result is cached per bit width.
    """
    from scipy.optimize import minimize_scalar

    n = 2 ** (bits - 1)
    grid = np.linspace(1e-4, 8.0 / n, 801)
    errs = [gaussian_uniform_mse(float(s), bits) for s in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(lambda s: gaussian_uniform_mse(s, bits), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-10})
    return float(res.x)


@register
class MuL2Q(TwoStatisticScheme):
    """Gaussian-optimal uniform quantizer on ``(x - μ) / σ`` (``mu_l2q``, 1..8 bits).

    Params: ``mu`` and ``sigma`` per group, each of shape ``broadcast_shape(x, axis)``.
    """

    name = "mu_l2q"

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """``{"mu": mean, "sigma": population std}`` per group, keepdim."""
        dims = reduce_dims(x, axis)
        x = x.to(compute_dtype(x))
        mu = x.mean(dim=dims, keepdim=True)
        var = (x - mu).square().mean(dim=dims, keepdim=True)
        # clamp before sqrt: no infinite gradient for a constant group.
        return {"mu": mu, "sigma": var.clamp_min(TINY * TINY).sqrt()}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Mid-rise uniform quantization of ``(x - μ) / σ``; same shape as ``x``."""
        xf, mu, sigma = upcast(x, params["mu"], params["sigma"])
        n = 2 ** (bits - 1)
        step = gaussian_optimal_step(bits)
        u = ((xf - mu) / sigma.clamp_min(TINY) / step).clamp(-n, n)  # z / Δ, overload at ±N
        k = torch.floor(u.detach()).clamp(-n, n - 1)
        level = u + (k + 0.5 - u).detach()  # k + 1/2 forward, identity gradient
        scale = torch.where(sigma > TINY, sigma, torch.zeros_like(sigma))
        return (level * step * scale + mu).to(x.dtype)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("mu", "sigma")

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Cell index ``k + N`` in ``[0, 2N)``."""
        xf, mu, sigma = upcast(x.detach(), params["mu"].detach(), params["sigma"].detach())
        n = 2 ** (bits - 1)
        u = ((xf - mu) / sigma.clamp_min(TINY) / gaussian_optimal_step(bits)).clamp(-n, n)
        return (torch.floor(u).clamp(-n, n - 1) + n).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        """``(k + 1/2) · Δ_b · σ + μ``, the expression :meth:`quantize` evaluates."""
        mu = params["mu"].detach().to(torch.float32)
        sigma = params["sigma"].detach().to(torch.float32)
        n = 2 ** (bits - 1)
        level = (codes.to(torch.float32) - n) + 0.5
        scale = torch.where(sigma > TINY, sigma, torch.zeros_like(sigma))
        return level * gaussian_optimal_step(bits) * scale + mu
