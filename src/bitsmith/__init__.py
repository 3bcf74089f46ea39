"""bitsmith: automatic mixed-precision quantization for PyTorch models."""

from bitsmith._version import __version__
from bitsmith.auto import autoquantize
from bitsmith.cost import Budget
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
from bitsmith.result import QuantizationResult


def load(path: str, model: object = None, *, key: bytes | str | None = None):
    """Rebuild a quantized model from a packed artifact (see :func:`bitsmith.export.load_packed`).

    ``key``: the secret the artifact was signed with; the file's HMAC-SHA256 signature must
    then match. Without a key only the SHA-256 checksum is verified, which detects damage,
    not tampering. Imported lazily so that ``import bitsmith`` does not pull in ONNX.
    """
    from bitsmith.export.packed import load_packed

    return load_packed(path, model, key=key)  # type: ignore[arg-type]


__all__ = [
    "Budget", "CalibrationError", "CalibrationStats", "LayerSpec", "LayerTable", "Policy",
    "PolicyError", "QSpec", "QuantizationResult", "__version__", "apply_stats",
    "autoquantize", "calibrate", "collect_stats", "evaluate", "load", "prepare", "quantize",
]
