"""bitsmith: automatic mixed-precision quantization for PyTorch models."""

from bitsmith.graph import LayerTable
from bitsmith.policy import LayerSpec, Policy, PolicyError, QSpec
from bitsmith.quantize import (
    CalibrationError,
    CalibrationStats,
    apply_stats,
    calibrate,
    collect_stats,
    prepare,
    quantize,
)

__version__ = "0.1.0"

__all__ = [
    "CalibrationError", "CalibrationStats", "LayerSpec", "LayerTable", "Policy", "PolicyError",
    "QSpec", "apply_stats", "calibrate", "collect_stats", "prepare", "quantize",
]
