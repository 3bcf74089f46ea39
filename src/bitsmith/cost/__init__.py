"""Cost model: size, BitOPs, activation memory, compression ratio."""

from bitsmith.cost.model import CostReport, LayerCost, estimate, layer_cost, weight_bytes

__all__ = ["CostReport", "LayerCost", "estimate", "layer_cost", "weight_bytes"]
