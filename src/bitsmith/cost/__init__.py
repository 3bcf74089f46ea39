"""Cost model: size, BitOPs, activation memory, compression ratio; the one Budget type."""

from bitsmith.cost.budget import (
    Budget,
    InfeasibleBudgetError,
    budget_values,
    latency_function,
    latency_total,
    within_budget,
)
from bitsmith.cost.model import CostReport, LayerCost, estimate, layer_cost, weight_bytes
from bitsmith.cost.sparse import MaskLayout, mask_layout

__all__ = ["Budget", "CostReport", "InfeasibleBudgetError", "LayerCost", "MaskLayout",
           "budget_values", "estimate", "latency_function", "latency_total", "layer_cost",
           "mask_layout", "weight_bytes", "within_budget"]
