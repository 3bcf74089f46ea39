"""Binary-basis schemes: ``binary`` (XNOR-Net), ``ternary`` (TWN) and ``resq`` (residual bases).

All three are *data-driven*: their scales are statistics of the tensor being
quantized, recomputed on every call (:meth:`Scheme.params_from_data`), per
tensor or per channel. ``G`` below is one group: the whole tensor, or one
channel (all elements sharing an index on the channel axis).

``binary`` (Rastegari et al., "XNOR-Net", ECCV 2016), 1 bit::

    α = mean_G |x|,    x̂ = α · sign(x)          (sign(0) = +1)

``ternary`` (Li & Liu, "Ternary Weight Networks", 2016), 2 bits::

    Δ = 0.7 · mean_G |x|,   α = mean of |x| over {|x| > Δ},
    x̂ = α · sign(x) · 1[|x| > Δ]   ∈ {-α, 0, α}

``resq`` (residual binarization with ``b`` binary bases: ReBNet, Ghasemzadeh
et al. 2018; ABC-Net, Lin et al. 2017)::

    r_0 = x;  for i = 0..b-1:  α_i = mean_G |r_i|,  r_{i+1} = r_i - α_i · sign(r_i)
    codebook = { Σ_i α_i · s_i : s ∈ {-1, +1}^b }    (at most 2^b values)
    x̂ = the codebook value nearest to x

The scales ``α_i`` are fitted greedily as in ReBNet / ABC-Net. The *encoding*
deliberately differs from the purely greedy one (``x̂ = Σ α_i sign(r_i)``, see
:func:`residual_binarize`): it picks the nearest of the ``2^b`` codebook values,
like the optimal (binary-search-tree) encoding of Xu et al., "Alternating
Multi-bit Quantization", ICLR 2018. The greedy scales are in general not
super-increasing (for Gaussian data ``α_0 < α_1 + α_2 + α_3`` already at
``b = 4``, earlier for heavier tails), and then greedy encoding is not a
projection: re-quantizing its output changes it. Nearest-value encoding is a
projection (idempotent), uses the same codebook, and its error is never larger
than the greedy one (equal where the scales are super-increasing, e.g. b <= 3
for Gaussian data).

Gradients: ``binary`` uses :func:`~bitsmith.schemes.base.sign_ste` (BNN's
clipped identity, ``|x| <= 1``) with a differentiable ``α`` (XNOR-Net's weight
gradient); ``ternary`` and ``resq`` pass the gradient straight through to ``x``
inside the representable range (``|x| <= α`` resp. ``|x| <= Σ α_i``) and
their scales are differentiable functions of ``x``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitsmith.schemes._common import TINY, compute_dtype, upcast
from bitsmith.schemes.base import Params, Scheme, reduce_dims, register, sign_ste


def _pm_sign(x: Tensor) -> Tensor:
    """``sign(x)`` in {-1, +1} with sign(0) = +1 (no gradient), as :func:`sign_ste`."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)).detach()


@register
class Binary(Scheme):
    """Scaled sign, ``x̂ = mean|x| · sign(x)`` (``binary``; XNOR-Net / BWN, 1 bit).

    Params: ``alpha`` (shape ``broadcast_shape(x, axis)``), the mean absolute
    value of each group.
    """

    name = "binary"
    min_bits, max_bits = 1, 1
    range_based = False

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """``{"alpha": mean |x|}`` per group, keepdim (shape ``broadcast_shape(x, axis)``)."""
        return {"alpha": x.abs().mean(dim=reduce_dims(x, axis), keepdim=True)}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """``α · sign(x)``, same shape as ``x``; gradient: clipped STE and through ``α``."""
        return params["alpha"] * sign_ste(x)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("alpha",)

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """1 for ``x >= 0`` (``+α``), 0 otherwise (``-α``)."""
        return (x.detach() >= 0).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        return params["alpha"].detach().to(torch.float32) * (2.0 * codes.to(torch.float32) - 1.0)

    def lattice(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int] | None:
        """``α · {-1, +1}``: scale ``α``, integers -1 and 1."""
        alpha = params["alpha"].detach().to(torch.float32)
        return alpha, torch.zeros_like(alpha), -1, 1


@register
class Ternary(Scheme):
    """Ternary Weight Networks, ``x̂ ∈ {-α, 0, α}`` (``ternary``, 2 bits).

    Params: ``delta`` (threshold ``0.7 · mean|x|``) and ``alpha`` (mean of
    ``|x|`` above the threshold), both of shape ``broadcast_shape(x, axis)``.
    Only ``alpha`` is stored in a deployed model (``float_params = 1``).
    """

    name = "ternary"
    min_bits, max_bits = 2, 2
    range_based = False

    #: TWN's approximation of the optimal threshold, ``Δ ≈ 0.7 · E|x|``.
    threshold_factor = 0.7

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """``{"delta", "alpha"}`` per group, keepdim (shape ``broadcast_shape(x, axis)``)."""
        dims = reduce_dims(x, axis)
        a = x.to(compute_dtype(x)).abs()
        delta = self.threshold_factor * a.mean(dim=dims, keepdim=True)
        mask = (a > delta).to(a.dtype)
        count = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)
        alpha = (a * mask).sum(dim=dims, keepdim=True) / count
        return {"delta": delta, "alpha": alpha}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """``α · sign(x) · 1[|x| > Δ]``, same shape as ``x``; STE identity for ``|x| <= α``."""
        xf, delta, alpha = upcast(x, params["delta"], params["alpha"])
        hard = torch.where(xf.abs() > delta, torch.sign(xf), torch.zeros_like(xf)).detach()
        soft = (xf / alpha.detach().clamp_min(TINY)).clamp(-1.0, 1.0)
        return (alpha * (soft + (hard - soft).detach())).to(x.dtype)

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return ("alpha",)  # delta is needed only to encode

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """0, 1, 2 for ``-α``, 0, ``+α``."""
        xf, delta = upcast(x.detach(), params["delta"].detach())
        hard = torch.where(xf.abs() > delta, torch.sign(xf), torch.zeros_like(xf))
        return (hard + 1).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        return params["alpha"].detach().to(torch.float32) * (codes.to(torch.float32) - 1.0)

    def lattice(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int] | None:
        """``α · {-1, 0, +1}``: scale ``α``, integers -1..1."""
        alpha = params["alpha"].detach().to(torch.float32)
        return alpha, torch.zeros_like(alpha), -1, 1


def residual_binarize(x: Tensor, bits: int, axis: int | None) -> tuple[list[Tensor], Tensor]:
    """Greedy residual binarization of ``x`` with ``bits`` binary bases.

    Args:
        x: tensor of any shape.
        bits: number of binary bases ``b``.
        axis: channel axis (per-channel scales) or ``None`` (per tensor).

    Returns:
        ``(alphas, x_greedy)``: the ``b`` scales ``α_i`` (each of shape
        ``broadcast_shape(x, axis)``, differentiable in ``x``) and the greedy
        reconstruction ``Σ_i α_i · sign(r_i)`` (shape of ``x``).
    """
    dims = reduce_dims(x, axis)
    r = x
    x_hat = torch.zeros_like(x)
    alphas: list[Tensor] = []
    for _ in range(bits):
        alpha = r.abs().mean(dim=dims, keepdim=True)
        step = alpha * _pm_sign(r)
        x_hat = x_hat + step
        r = r - step
        alphas.append(alpha)
    return alphas, x_hat


def _sign_patterns(bits: int, like: Tensor) -> Tensor:
    """All ``2^bits`` vectors in {-1, +1}^bits, shape ``(2^bits, bits)``."""
    codes = torch.arange(2 ** bits, device=like.device)
    bit = (codes[:, None] >> torch.arange(bits, device=like.device)) & 1
    return bit.to(like.dtype) * 2 - 1


def _ungroup(t: Tensor, axis: int | None, grouped: torch.Size) -> Tensor:
    """Inverse of the ``(G, M)`` grouping: back to the input's layout."""
    out = t.reshape(grouped)
    return out if axis is None else out.movedim(0, axis)


def _channel_axis(x: Tensor, p: Tensor) -> int | None:
    """The axis of ``x`` on which the broadcastable parameter ``p`` varies, or ``None``."""
    if p.numel() == 1:
        return None
    offset = x.dim() - p.dim()
    for d, size in enumerate(p.shape):
        if size == p.numel():
            return d + offset
    raise ValueError(f"parameter of shape {tuple(p.shape)} is not per-tensor or per-channel")


@register
class ResidualBinary(Scheme):
    """``b`` residual binary bases, nearest-codeword encoding (``resq``, 1..8 bits).

    Params: ``alpha0 .. alpha{b-1}`` (each of shape ``broadcast_shape(x, axis)``),
    fitted greedily by :func:`residual_binarize`. ``float_params_for(b) = b``; the
    class attribute ``float_params`` is 0 because the count depends on ``b``.
    """

    name = "resq"
    range_based = False
    float_params = 0  # depends on the bit width: use float_params_for(bits)

    def float_params_for(self, bits: int) -> int:
        """One float scale per binary base."""
        return bits

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """``{"alpha0", ..., "alpha{b-1}"}`` from greedy residual fitting."""
        alphas, _ = residual_binarize(x, bits, axis)
        return {f"alpha{i}": a for i, a in enumerate(alphas)}

    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Nearest codebook value ``Σ α_i s_i`` for each element; same shape as ``x``.

        Vectorised: the ``2^b`` codewords of each group are sorted and the
        midpoints searched with :func:`torch.searchsorted`. Gradient: identity
        to ``x`` for ``|x| <= Σ α_i`` (zero outside), and to each ``α_i``
        through the chosen codeword.
        """
        axis, grouped, xg, a, values = self._sorted_codebook(x, params, bits)
        bounds = ((values[:, 1:] + values[:, :-1]) / 2).detach().contiguous()
        # right=True: a value on a midpoint goes up (x = 0 -> +α at b = 1, as sign(0) = +1).
        idx = torch.searchsorted(bounds, xg.detach().contiguous(), right=True)
        hard = torch.gather(values, 1, idx)  # (G, M), differentiable in the alphas
        limit = a.sum(dim=1, keepdim=True).detach()
        xc = torch.maximum(torch.minimum(xg, limit), -limit)
        out = hard + (xc - xc.detach())
        return _ungroup(out, axis, grouped)

    def _sorted_codebook(self, x: Tensor, params: Params, bits: int
                         ) -> tuple[int | None, torch.Size, Tensor, Tensor, Tensor]:
        """``(axis, grouped, xg, a, values)``: ``x`` grouped as ``(G, M)`` (``grouped``:
        the shape to undo it with, see :func:`_ungroup`), scales ``(G, b)`` and each group's
        ``2^b`` codewords sorted ascending, ``(G, 2^b)``."""
        alphas = [params[f"alpha{i}"] for i in range(bits)]
        axis = _channel_axis(x, alphas[0])
        if axis is None:
            grouped = x.shape
            xg = x.reshape(1, -1)
            a = torch.stack([al.reshape(1) for al in alphas], dim=1)  # (1, b)
        else:
            moved = x.movedim(axis, 0)
            grouped = moved.shape
            xg = moved.reshape(moved.shape[0], -1)  # (C, M)
            a = torch.stack([al.reshape(-1) for al in alphas], dim=1)  # (C, b)
        signs = _sign_patterns(bits, a)  # (K, b)
        # Elementwise sum (not a matmul) so that the codebook is exactly symmetric.
        terms = [a[:, i:i + 1] * signs[:, i] for i in range(bits)]
        codebook = sum(terms[1:], terms[0])  # (G, K)
        values, _ = torch.sort(codebook, dim=1)
        return axis, grouped, xg, a, values

    def stored_params(self, bits: int) -> tuple[str, ...]:
        return tuple(f"alpha{i}" for i in range(bits))

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Index of the nearest codeword in the group's sorted codebook, ``[0, 2^b)``."""
        with torch.no_grad():
            axis, grouped, xg, _, values = self._sorted_codebook(x.detach(), params, bits)
            bounds = ((values[:, 1:] + values[:, :-1]) / 2).contiguous()
            idx = torch.searchsorted(bounds, xg.contiguous(), right=True)
        return _ungroup(idx, axis, grouped)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        """The codewords the codes index (the values :meth:`quantize` gathers)."""
        with torch.no_grad():
            axis, grouped, cg, _, values = self._sorted_codebook(codes, params, bits)
            out = torch.gather(values.to(torch.float32), 1, cg)
        return _ungroup(out, axis, grouped)
