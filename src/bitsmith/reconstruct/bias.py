"""Bias correction of quantized weights (Nagel et al., "Data-Free Quantization", ICCV 2019).

Round-to-nearest weights ``W_q = W + ΔW`` shift every output channel's mean by
``E[ΔW · x] = ΔW · E[x]``: with post-ReLU inputs (positive means) the per-weight
errors do not cancel, and at 3-4 bits the shift costs whole points of accuracy.
The correction subtracts it from the bias::

    b_c  <-  b_c - Σ_i Σ_k ΔW[c, i, k] · μ_i

where ``μ_i`` is the mean of input channel ``i`` of the layer over the
calibration images, measured once on the float model (:func:`input_means`).
This is the *empirical* variant (means from calibration data rather than from
batch-norm statistics); zero padding at the borders is ignored. Transposed
convolutions are left unchanged.

The Policy carries the choice (``Policy.bias_correction``): ``bitsmith.quantize``
applies it after the weights are rounded (round-to-nearest or learned), with ``ΔW``
measured against the float weights, so a saved Policy rebuilds the corrected model.
The means come with the calibration statistics (:attr:`CalibrationStats.means`,
gathered in the same pass as the ranges) or from :func:`input_means`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn


def channel_sums(x: Tensor, linear: bool) -> tuple[Tensor, int]:
    """Per-channel sum of one input batch and the number of values per channel.

    Channels are axis 1 for convolutions and the last axis for linear layers.
    """
    x = x.detach().float()
    flat = x.reshape(-1, x.shape[-1]) if linear else x.transpose(0, 1).reshape(x.shape[1], -1).t()
    return flat.sum(0), flat.shape[0]


class MeanAccumulator:
    """Running per-channel means of layer inputs, batch by batch (see :func:`channel_sums`)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def update(self, name: str, x: Tensor, linear: bool) -> None:
        total, count = channel_sums(x, linear)
        self.sums[name] = self.sums.get(name, 0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def means(self) -> dict[str, Tensor]:
        return {n: self.sums[n] / self.counts[n] for n in self.sums}


def input_means(model: nn.Module, layer_names: Iterable[str], batches: Iterable[Tensor]
                ) -> dict[str, Tensor]:
    """Per-channel mean of each named layer's input over ``batches`` (float model).

    Layers that receive no input are left out.
    """
    modules = dict(model.named_modules())
    acc = MeanAccumulator()

    def hook(name: str, linear: bool):
        def pre(_m: nn.Module, args: tuple) -> None:
            acc.update(name, args[0], linear)
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n, isinstance(modules[n], nn.Linear)))
               for n in layer_names if n in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return acc.means()


def output_shift(layer: nn.Module, delta: Tensor, mean: Tensor) -> Tensor | None:
    """Mean output change ``ΔW · μ`` per output channel of ``layer`` (``None``: unsupported)."""
    if isinstance(layer, nn.Linear):
        return delta @ mean.to(delta)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not isinstance(
            layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        groups = int(layer.groups)
        out_ch, in_per_group = delta.shape[0], delta.shape[1]
        summed = delta.reshape(out_ch, in_per_group, -1).sum(-1)        # (C_out, C_in/g)
        mu = mean.to(delta).reshape(groups, in_per_group)               # (g, C_in/g)
        mu = mu.repeat_interleave(out_ch // groups, dim=0)              # (C_out, C_in/g)
        return (summed * mu).sum(1)
    return None


def correct_bias(layer: nn.Module, shift: Tensor) -> None:
    """Subtract ``shift`` from ``layer``'s bias (a bias is added when the layer has none)."""
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(-shift.detach().clone())
        else:
            layer.bias.data = layer.bias.data - shift.to(layer.bias)


def bias_correct(qmodel: nn.Module, means: Mapping[str, Tensor],
                 quantized_weights: Mapping[str, Tensor] | None = None,
                 float_weights: Mapping[str, Tensor] | None = None) -> list[str]:
    """Correct the bias of every quantized layer of ``qmodel`` in place; returns their names.

    Args:
        qmodel: a model from :func:`bitsmith.quantize` (weight quantizers attached).
        means: per-channel input means of the float model for these layer names.
        quantized_weights: optional precomputed ``Q(W)`` per layer (else the layer's
            :meth:`quantized_weight`).
        float_weights: the float weights ``W`` per layer (else the layer's own
            ``weight``; needed once reconstruction has replaced it by its grid values).
    """
    from bitsmith.graph import quantized_layers

    done = []
    with torch.no_grad():
        for name, layer in quantized_layers(qmodel).items():
            if name not in means or layer.weight_quantizer is None:
                continue
            if quantized_weights is not None and name in quantized_weights:
                wq = quantized_weights[name]
            else:
                wq = layer.quantized_weight().detach()
            w = (float_weights[name] if float_weights is not None and name in float_weights
                 else layer.weight.detach())
            shift = output_shift(layer, wq - w, means[name])
            if shift is not None:
                correct_bias(layer, shift)
                done.append(name)
    return done
