"""Frozen weight quantizers: the state of a quantized layer rebuilt from a packed artifact.

A loaded layer's ``weight`` already holds the dequantized values of its codes
(bit-identical to what the simulation's weight quantizer produced), so its
weight quantizer must not quantize again: for data-driven schemes (binary,
ternary, resq, μL2Q, ZoomQ) re-fitting the parameters on the quantized values
would move them. :class:`FrozenWeightQuantizer` (defined with the Quantizer, as
learned rounding freezes weights too) keeps the parameters (so
``.params()`` still reports them) and passes the weight through.
:func:`thaw_weights` turns the layers back into ordinary fake-quantized layers
(for fine-tuning); their parameters are then re-fitted from the dequantized
weights.
"""

from __future__ import annotations

from torch import nn

from bitsmith.graph import quantized_layers
from bitsmith.graph.quantizer import FrozenWeightQuantizer, Quantizer, freeze

__all__ = ["FrozenWeightQuantizer", "freeze", "thaw_weights"]


def thaw_weights(model: nn.Module) -> nn.Module:
    """Make every frozen weight quantizer of ``model`` an ordinary :class:`Quantizer` again."""
    for layer in quantized_layers(model).values():
        if isinstance(layer.weight_quantizer, FrozenWeightQuantizer):
            layer.weight_quantizer.__class__ = Quantizer
            layer.weight_quantizer._fitted_version = None
    return model
