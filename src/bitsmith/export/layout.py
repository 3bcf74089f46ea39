"""Where each logical tensor of a packed artifact lives: a few contiguous blobs, no index.

The artifact stores its logical tensors (``conv1.weight.codes``, ``conv1.weight.scale``,
``conv1.input.zero_point``, ``conv1.bias``, ...) concatenated into five safetensors
entries, so that the file is the cost model's byte count plus a small header:

========== ======= =====================================================================
blob       dtype   contents, in layout order
========== ======= =====================================================================
codes      uint8   each quantized weight's bit-packed codes, ``ceil(n·bits/8)`` bytes
masks      uint8   each sparse weight's survivor mask (bitmask or relative index)
scales     float32 each quantizer's stored parameters (``Scheme.stored_params``), per group
zero_points uint8  each quantizer's integer zero points (schemes that have one)
float32    float32 every other float32 tensor of the model's ``state_dict``, in its order
========== ======= =====================================================================

Tensors of other dtypes (e.g. ``num_batches_tracked``) are stored under their own names.
The order and sizes follow from the quantized model's structure (its Policy, shapes and
``state_dict`` keys) plus, for sparse layers, the survivor counts in the metadata, so
:func:`layout` gives the same answer when saving and when loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from bitsmith.export.bitpack import packed_nbytes
from bitsmith.graph import LayerTable, quantized_layers
from bitsmith.schemes import get_scheme
from bitsmith.schemes.blocks import block_count

QUANTIZER_KEYS = (".weight_quantizer.", ".input_quantizer.")
BLOB_DTYPES = {"codes": np.uint8, "masks": np.uint8, "scales": np.float32,
               "zero_points": np.uint8, "float32": np.float32}


@dataclass(frozen=True)
class Slot:
    """One logical tensor: its name, the blob holding it and its element count."""

    name: str
    blob: str
    count: int


def _quantizer_slots(prefix: str, spec, groups: int) -> list[Slot]:
    scheme = get_scheme(spec.scheme)
    slots = [Slot(f"{prefix}.{key}", "scales", groups) for key in scheme.stored_params(spec.bits)]
    if scheme.zero_point_bytes:
        slots.append(Slot(f"{prefix}.zero_point", "zero_points", groups))
    return slots


def quantized_weight_keys(model: nn.Module) -> set[str]:
    """``state_dict`` keys replaced by codes: the weights of quantized layers."""
    return {f"{n}.weight" for n, m in quantized_layers(model).items()
            if m.weight_quantizer is not None}


def layout(model: nn.Module, table: LayerTable, sparse: Mapping[str, Mapping[str, Any]]
           ) -> list[Slot]:
    """The slots of ``model`` (quantized structure; values irrelevant), in storage order."""
    slots: list[Slot] = []
    for name, layer in quantized_layers(model).items():
        wq = layer.weight_quantizer
        if wq is not None:
            n = layer.weight.numel()
            groups = (block_count(tuple(layer.weight.shape), wq.block_size)
                      if wq.block_size is not None
                      else 1 if wq.axis is None else layer.weight.shape[wq.axis])
            s = sparse.get(name)
            slots.append(Slot(f"{name}.weight.codes", "codes",
                              packed_nbytes(s["survivors"] if s else n, wq.spec.bits)))
            if s:
                slots.append(Slot(f"{name}.weight.mask", "masks", int(s["bytes"])))
            slots += _quantizer_slots(f"{name}.weight", wq.spec, groups)
        iq = layer.input_quantizer
        if iq is not None and iq.scheme.range_based:
            shape = table[name].input_shape
            groups = 1 if iq.axis is None else shape[iq.axis]
            slots += _quantizer_slots(f"{name}.input", iq.spec, groups)
    skip = quantized_weight_keys(model)
    for key, value in model.state_dict().items():
        if key in skip or any(q in key for q in QUANTIZER_KEYS):
            continue
        blob = "float32" if str(value.dtype) == "torch.float32" else key
        slots.append(Slot(key, blob, value.numel()))
    return slots


def to_blobs(tensors: Mapping[str, np.ndarray], slots: list[Slot]) -> dict[str, np.ndarray]:
    """Concatenate logical ``tensors`` into blobs in slot order (sizes are checked)."""
    parts: dict[str, list[np.ndarray]] = {}
    names = {s.name for s in slots}
    if set(tensors) != names:
        raise ValueError(f"tensors and layout differ: {sorted(set(tensors) ^ names)[:5]}")
    for s in slots:
        arr = np.ascontiguousarray(tensors[s.name]).reshape(-1)
        if arr.size != s.count:
            raise ValueError(f"{s.name}: {arr.size} elements, layout says {s.count}")
        if s.blob in BLOB_DTYPES:
            arr = arr.astype(BLOB_DTYPES[s.blob], copy=False)
        parts.setdefault(s.blob, []).append(arr)
    return {blob: np.concatenate(p) for blob, p in parts.items() if sum(a.size for a in p)}


def from_blobs(blobs: Mapping[str, np.ndarray], slots: list[Slot]) -> dict[str, np.ndarray]:
    """Split blobs back into flat logical tensors; ``ValueError`` if sizes do not add up."""
    out: dict[str, np.ndarray] = {}
    offsets: dict[str, int] = {}
    for s in slots:
        data = blobs.get(s.blob)
        start = offsets.get(s.blob, 0)
        if s.count and (data is None or start + s.count > data.size):
            raise ValueError(f"{s.name} lies beyond the stored {s.blob!r} data")
        out[s.name] = (data.reshape(-1)[start:start + s.count] if s.count and data is not None
                       else np.zeros(0, BLOB_DTYPES.get(s.blob, np.float32)))
        offsets[s.blob] = start + s.count
    for blob, data in blobs.items():
        if data.size != offsets.get(blob, 0):
            raise ValueError(f"blob {blob!r} holds {data.size} elements, the model needs "
                             f"{offsets.get(blob, 0)}")
    return out
