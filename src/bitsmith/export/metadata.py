"""Metadata of the packed artifact: compact Policy and LayerTable, signatures, checksum.

The metadata is JSON in the safetensors header. To keep it to a couple of KB the Policy
stores each distinct LayerSpec once (default QSpec fields omitted) and the LayerTable, when
it is stored at all, lists field names once. The SHA-256 covers every blob and the
metadata, so a truncated or damaged file is detected on load; it is stored in the file, so
whoever edits the file can recompute it: only the optional HMAC-SHA256 ``signature`` (keyed)
detects tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsmith.export.layout import QUANTIZER_KEYS, quantized_weight_keys
from bitsmith.graph import LayerInfo, LayerTable
from bitsmith.policy import LayerSpec, Policy, QSpec


def _feed(h: Any, tensors: dict[str, np.ndarray], meta_json: str) -> str:
    """Hash every tensor's name, dtype, shape and bytes, then the metadata; ``h.hexdigest()``."""
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    h.update(meta_json.encode())
    return h.hexdigest()


def digest(tensors: dict[str, np.ndarray], meta_json: str) -> str:
    """SHA-256 (hex) of the content: detects damage, not tampering (anyone can recompute it)."""
    return _feed(hashlib.sha256(), tensors, meta_json)


def signature(tensors: dict[str, np.ndarray], meta_json: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the same content under a secret ``key``: detects tampering by
    anyone who does not hold the key."""
    return _feed(hmac.new(key, digestmod=hashlib.sha256), tensors, meta_json)


def as_key(key: bytes | str | None) -> bytes | None:
    """A signing key as bytes (``str`` is UTF-8 encoded); ``None`` passes through.

    Raises:
        ArtifactError: an empty key, or one that is neither bytes nor str.
    """
    from bitsmith.export.errors import ArtifactError

    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise ArtifactError(f"the signing key must be bytes or str, got {type(key).__name__}")
    if not key:
        raise ArtifactError("the signing key is empty; give at least 16 random bytes")
    return bytes(key)


def versions() -> dict[str, str]:
    """Versions of bitsmith, torch and safetensors that wrote the artifact."""
    import safetensors

    from bitsmith._version import __version__

    return {"bitsmith": __version__, "torch": torch.__version__,
            "safetensors": safetensors.__version__}


def state_signature(model: nn.Module) -> str:
    """Short hash of the stored ``state_dict`` keys and shapes (architecture check)."""
    skip = quantized_weight_keys(model)
    items = [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()
             if k not in skip and not any(q in k for q in QUANTIZER_KEYS)]
    return hashlib.sha256("|".join(items).encode()).hexdigest()[:16]


_TABLE_FIELDS = [f for f in LayerInfo.__dataclass_fields__]


def compact_table(table: LayerTable) -> dict[str, Any]:
    """The LayerTable as one list of values per layer (field names once)."""
    return {"fields": _TABLE_FIELDS, "rows": [[getattr(l, f) for f in _TABLE_FIELDS]
                                              for l in table],
            "total_params": table.total_params, "unused": table.unused}


def table_from(data: dict[str, Any]) -> LayerTable:
    """Inverse of :func:`compact_table`."""
    rows = [LayerInfo(**{f: tuple(v) if isinstance(v, list) else v
                         for f, v in zip(data["fields"], row)}) for row in data["rows"]]
    return LayerTable(rows, data["total_params"], data["unused"])


def spec_dict(spec: LayerSpec) -> dict[str, Any]:
    """A LayerSpec as a dict without default-valued QSpec fields (``from_dict`` fills them)."""
    default = QSpec().to_dict()
    out: dict[str, Any] = {}
    for role in ("weight", "act"):
        q = getattr(spec, role)
        out[role] = None if q is None else {k: v for k, v in q.to_dict().items()
                                            if v != default[k]}
    if spec.sparsity:
        out["sparsity"] = spec.sparsity
    return out


def compact_policy(policy: Policy) -> dict[str, Any]:
    """The Policy with each distinct LayerSpec stored once: ``specs`` + ``layers`` indices."""
    specs: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    layers = {}
    for name, spec in policy.items():
        d = spec_dict(spec)
        key = json.dumps(d, sort_keys=True)
        if key not in index:
            index[key] = len(specs)
            specs.append(d)
        layers[name] = index[key]
    # model-wide choices (rounding, bias correction, calibration size) when not default
    options = {k: v for k, v in policy.to_dict().items() if k not in ("format", "layers")}
    return {"specs": specs, "layers": layers, **options}


def policy_from(data: dict[str, Any]) -> Policy:
    """Inverse of :func:`compact_policy` (validated by ``Policy.from_dict``)."""
    specs = data["specs"]
    options = {k: v for k, v in data.items() if k not in ("specs", "layers")}
    return Policy.from_dict({**options,
                             "layers": {n: specs[i] for n, i in data["layers"].items()}})
