"""QAG: tracing, BN folding, the LayerTable and quantized-layer swapping."""

from bitsmith.graph.convert import (
    ConversionError,
    ConversionReport,
    ConversionWarning,
    apply_policy,
    convert,
)
from bitsmith.graph.layer_table import LayerInfo, LayerTable, is_quantizable, layer_weight
from bitsmith.graph.qmodules import is_quantized, make_quantized, quantized_layers

__all__ = [
    "ConversionError", "ConversionReport", "ConversionWarning", "LayerInfo", "LayerTable",
    "apply_policy", "convert", "is_quantizable", "is_quantized", "layer_weight",
    "make_quantized", "quantized_layers",
]
