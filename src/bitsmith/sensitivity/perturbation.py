"""Weight perturbations ``Q(W) - W`` of every (layer, candidate), without running data.

The float reference is the BN-folded model from :func:`bitsmith.prepare` (the
weights that quantization actually rounds). ``Q`` is the same
:class:`~bitsmith.graph.quantizer.Quantizer` that a quantized layer uses, so
``W + dW`` is exactly the weight the quantized model computes with.
Sparsity in a candidate is not applied (pruning is not part of ``Q``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.graph import layer_weight
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import QSpec


@torch.no_grad()
def quantization_error(weight: Tensor, spec_weight: QSpec | None, channel_axis: int) -> Tensor:
    """``Q(W) - W`` for one weight tensor (same shape; zeros when ``spec_weight`` is None).

    Args:
        weight: e.g. ``(C_out, C_in/groups, kH, kW)`` for a Conv2d.
        channel_axis: output-channel axis (``LayerInfo.weight_channel_axis``).
    """
    if spec_weight is None:
        return torch.zeros_like(weight)
    q = Quantizer(spec_weight, "weight", channel_axis)
    return q(weight.detach()) - weight.detach()


def weight_perturbations(float_model: nn.Module, space: CandidateSpace
                         ) -> dict[str, list[Tensor]]:
    """``layer -> [dW per candidate]`` (each the shape of the layer's weight).

    Args:
        float_model: the BN-folded float model whose layer names match ``space``.
    """
    out: dict[str, list[Tensor]] = {}
    for name, specs in space.items():
        w = layer_weight(float_model, name)
        axis = space.table[name].weight_channel_axis
        out[name] = [quantization_error(w, s.weight, axis) for s in specs]
    return out


def perturbation_norms(deltas: dict[str, list[Tensor]]) -> dict[str, list[float]]:
    """``layer -> [||dW||^2 per candidate]``."""
    return {n: [float(d.pow(2).sum()) for d in ds] for n, ds in deltas.items()}
