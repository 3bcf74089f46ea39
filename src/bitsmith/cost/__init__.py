"""Cost model: size, BitOPs, activation memory, compression ratio."""

from bitsmith.cost.model import CostReport, LayerCost, estimate, layer_cost, weight_bytes
from bitsmith.cost.sparse import MaskLayout, mask_layout

__all__ = ["CostReport", "LayerCost", "MaskLayout", "estimate", "layer_cost", "mask_layout",
           "weight_bytes"]
