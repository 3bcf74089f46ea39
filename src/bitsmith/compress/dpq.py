"""DPQ weight quantization of pruned layers: pseudo-mean scale, two-level scaling factors.

DPQ (Pei et al., "DPQ: dynamic pseudo-mean mixed-precision quantization for pruned neural
network", Machine Learning 113, 2024) names its parts but its exact formulas are not
public (the paper is paywalled). bitsmith implements this reading (see ``docs/compress.md``):

**Grid.** Weights use the ordinary signed symmetric uniform grid (``uniform_symmetric``):
``ŵ = s·clamp(round(w / s), -Q, Q)``, ``Q = 2^(b-1) - 1``. Zero is a level, so a pruned
weight (exactly 0) quantizes to exactly 0, and every integer runtime / the packed format
stores it unchanged. Only the *scale* ``s`` is DPQ's.

**Pseudo-mean (level 1, coarse scale, one per layer).** ``m̄ = mean(|w_i|)`` over the
*surviving* (nonzero) weights only. A plain mean over all weights would be
``(1 - sparsity)·m̄``, shrinking the scale with the sparsity although the surviving weights
did not change. The clipping threshold is ``T = κ_b · m̄`` with ``κ_b`` the MSE-optimal clip
of a unit-mean Laplace variable on this ``b``-bit grid (:func:`laplace_clip_ratio`, the
ACIQ idea of Banner et al. 2019), and the coarse step is ``Δ_0 = T / Q``.

**Two-level scaling factors (level 2, correction).** Each output channel ``c`` gets a small
correction factor ``γ_c`` from a 17-value grid ``{1 + j/16 : j = -8..8}`` (so ``[0.5, 1.5]``),
chosen to minimise that channel's quantization error ``Σ_i (w_ci - ŵ_ci)²`` over its surviving
weights with step ``s_c = Δ_0·γ_c``. ``γ = 1`` is a candidate, so the correction never
increases a channel's error over the coarse scale alone: it compensates the error that a
single layer-wide scale leaves where channels differ. The deployed per-channel scale is the
product ``s_c`` (stored as one float32 per channel, which is what the cost model charges;
storing ``Δ_0`` once plus 5-bit ``γ`` codes would save ``≈3.4 bytes`` per channel and is not
done, so the accounting stays honest about the format actually written).

``granularity="tensor"`` uses ``Δ_0`` alone (the "one scale" ablation); ``pseudo_mean=False``
uses the plain mean over all weights (the "plain scale" ablation).

Scales are refitted from the current weight whenever it changes (each training step), so
they follow pruning and fine-tuning. Gradients are straight-through (the scheme's STE).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from bitsmith.graph import quantized_layers
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import LayerSpec, QSpec
from bitsmith.quantize import quant_info

CORRECTION_GRID = tuple(1.0 + j / 16.0 for j in (0, *[k for i in range(1, 9) for k in (-i, i)]))
WEIGHT_SCHEME = "uniform_symmetric"


@functools.cache
def laplace_clip_ratio(bits: int) -> float:
    """``κ_b``: the clip ``T`` minimising ``E[(x - Q_T(x))²]``, ``x ~ Laplace``, ``E|x| = 1``.

    ``Q_T`` is the symmetric grid with levels ``k·T/Q``, ``|k| <= Q = 2^(b-1) - 1``.
    Computed numerically once per bit width (density ``e^{-|x|}/2``, trapezoid rule on
    ``[0, 40]``, golden-section search over ``T``).
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    q = 2 ** (bits - 1) - 1
    x = np.linspace(0.0, 40.0, 400_001)
    dens = np.exp(-x)  # two-sided density e^{-|x|}/2, folded onto x >= 0

    def mse(t: float) -> float:
        step = t / q
        err = (x - np.minimum(np.round(x / step), q) * step) ** 2
        return float(np.trapezoid(err * dens, x))

    lo, hi = 0.05, 40.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = mse(a), mse(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = mse(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = mse(b)
    return (lo + hi) / 2


def pseudo_mean(w: Tensor, survivors_only: bool = True) -> Tensor:
    """Mean ``|w|`` over nonzero entries (``survivors_only``) or over all entries; scalar."""
    a = w.detach().abs().float().reshape(-1)
    if survivors_only:
        n = int((a > 0).sum())
        return a.sum() / max(n, 1)
    return a.mean()


def dpq_scale(w: Tensor, bits: int, per_channel: bool = True, pseudo: bool = True
              ) -> Tensor:
    """DPQ scale of weight ``w`` (dim 0 = output channels) at ``bits`` bits.

    Returns:
        ``(C_out, 1, ..., 1)`` per-channel scales ``Δ_0·γ_c`` (``per_channel``) or an
        all-ones-shaped tensor holding ``Δ_0`` (per tensor), float32.
    """
    q = 2 ** (bits - 1) - 1
    wd = w.detach().float()
    m = pseudo_mean(wd, survivors_only=pseudo)
    coarse = (laplace_clip_ratio(bits) * m / q).clamp_min(1e-12)
    if not per_channel:
        return coarse.reshape([1] * w.dim())
    flat = wd.reshape(w.shape[0], -1)  # (C, K)
    grid = torch.tensor(CORRECTION_GRID, dtype=torch.float32, device=w.device)  # (G,)
    steps = coarse * grid  # (G,)
    scaled = flat.unsqueeze(0) / steps.reshape(-1, 1, 1)  # (G, C, K)
    recon = torch.clamp(torch.round(scaled), -q, q) * steps.reshape(-1, 1, 1)
    err = (recon - flat.unsqueeze(0)).square().sum(dim=2)  # (G, C); zeros add 0
    best = torch.argmin(err, dim=0)  # first minimum: grid[0] = 1 wins ties
    return steps[best].reshape(w.shape[0], *([1] * (w.dim() - 1)))


class DPQWeightQuantizer(Quantizer):
    """A weight :class:`Quantizer` (``uniform_symmetric``) whose scale is DPQ's.

    Drop-in for the weight quantizer of a quantized layer: ``params()`` are the scheme's
    ``{"scale", "qmax"}``, so conversion, export and the cost model treat it as a plain
    ``uniform_symmetric`` quantizer; only :meth:`fit_weight` differs (pseudo-mean coarse
    scale, per-channel correction for ``granularity="channel"``).

    Args:
        spec: a ``uniform_symmetric`` QSpec (not learnable, no reduced range / pow2 scale).
        label: name for messages.
        pseudo: pseudo-mean (survivors only) or plain mean (all weights).
    """

    def __init__(self, spec: QSpec, label: str = "", pseudo: bool = True) -> None:
        if spec.scheme != WEIGHT_SCHEME or spec.learnable or spec.reduced_range \
                or spec.pow2_scale or spec.bits < 2 or spec.bits > 8:
            raise ValueError(f"{label}: DPQ weights need a plain {WEIGHT_SCHEME} QSpec with "
                             f"2..8 bits, got {spec}")
        super().__init__(spec, "weight", 0, label)
        self.pseudo = pseudo

    def fit_weight(self, w: Tensor) -> None:
        """Refit the DPQ scale to the current weight ``w`` (any shape, dim 0 = channels)."""
        self._remember_shape(w)
        scale = dpq_scale(w, self.spec.bits, self.axis is not None, self.pseudo)
        qmax = float(2 ** (self.spec.bits - 1) - 1)
        self._store({"scale": scale, "qmax": torch.full_like(scale, qmax)})
        self._fitted_version = (w.data_ptr(), w._version)

    def extra_repr(self) -> str:
        return f"{self.spec.short()}, dpq, pseudo_mean={self.pseudo}"


def dpq_spec(bits: int, two_level: bool = True) -> QSpec:
    """DPQ's weight QSpec: ``uniform_symmetric`` at ``bits``, per channel if two-level."""
    return QSpec(WEIGHT_SCHEME, bits, "channel" if two_level else "tensor")


def set_layer_spec(qmodel: nn.Module, name: str, spec: LayerSpec, pseudo: bool = True) -> None:
    """Give layer ``name`` of a quantized model a new LayerSpec (weight bits, sparsity).

    The weight quantizer is replaced by a :class:`DPQWeightQuantizer` for the new weight
    spec (the activation quantizer is kept; ``spec.act`` must equal the layer's), and the
    model's Policy (``qmodel.bitsmith.policy``) is updated.
    """
    layer = quantized_layers(qmodel)[name]
    if spec.act != layer.layer_spec.act:
        raise ValueError(f"{name}: set_layer_spec cannot change the activation spec")
    if spec.weight != layer.layer_spec.weight or not isinstance(layer.weight_quantizer,
                                                                 DPQWeightQuantizer):
        new = DPQWeightQuantizer(spec.quantized_weight(name), f"{name}.weight", pseudo=pseudo)
        with torch.no_grad():
            new.fit_weight(layer.weight)  # buffers exist now (state_dict / checkpoints)
        layer.weight_quantizer = new
    layer.layer_spec = spec
    info = quant_info(qmodel)
    info.policy = info.policy.with_layers({name: spec})


def install_dpq(qmodel: nn.Module, names: Iterable[str] | None = None, pseudo: bool = True
                ) -> list[str]:
    """Replace the weight quantizers of ``names`` (default: all ``uniform_symmetric`` ones).

    Returns the names of the layers now using :class:`DPQWeightQuantizer`.
    """
    layers = quantized_layers(qmodel)
    chosen = list(names) if names is not None else [
        n for n, m in layers.items()
        if m.layer_spec.weight is not None and m.layer_spec.weight.scheme == WEIGHT_SCHEME]
    for n in chosen:
        layer = layers[n]
        quantizer = DPQWeightQuantizer(layer.layer_spec.quantized_weight(n), f"{n}.weight",
                                       pseudo=pseudo)
        with torch.no_grad():
            quantizer.fit_weight(layer.weight)  # buffers exist now (state_dict / checkpoints)
        layer.weight_quantizer = quantizer
    return chosen


def quantization_nsr(w: Tensor, bits: int, two_level: bool = True, pseudo: bool = True
                     ) -> float:
    """Noise-to-signal ratio ``‖w - ŵ‖² / ‖w‖²`` of DPQ quantization of ``w`` at ``bits``.

    The per-layer distortion the dynamic bit allocation minimises: it grows with the spread,
    heavy tails (kurtosis) and outlier share of the surviving weights, which is how the bit
    width follows the weight distribution.
    """
    wd = w.detach().float()
    scale = dpq_scale(wd, bits, two_level, pseudo)
    q = 2 ** (bits - 1) - 1
    w_hat = torch.clamp(torch.round(wd / scale), -q, q) * scale
    return float((wd - w_hat).square().sum() / wd.square().sum().clamp_min(1e-30))

