"""bitsmith: automatic mixed-precision quantization for PyTorch models."""

from bitsmith._version import __version__
from bitsmith.graph import LayerTable
from bitsmith.inputs.metric import evaluate
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


def load(path: str, model: object = None):  # noqa: ANN201 - returns torch.nn.Module
    """Rebuild a quantized model from a packed artifact (see :func:`bitsmith.export.load_packed`).

    Imported lazily so that ``import bitsmith`` does not pull in ONNX.
    """
    from bitsmith.export.packed import load_packed

    return load_packed(path, model)  # type: ignore[arg-type]


__all__ = [
    "CalibrationError", "CalibrationStats", "LayerSpec", "LayerTable", "Policy", "PolicyError",
    "QSpec", "__version__", "apply_stats", "calibrate", "collect_stats", "evaluate", "load",
    "prepare", "quantize",
]
