"""Size of a sparse weight's survivor mask: the one function shared by cost model and export.

A pruned weight of ``n`` elements with ``m`` survivors (nonzero entries) stores the
survivors' codes plus their positions in the cheaper of two encodings:

* **bitmask**: one bit per weight, ``ceil(n / 8)`` bytes;
* **relative index** (Deep Compression, Han et al. ICLR 2016, with an escape instead of
  filler zeros): the gap ``g_i`` (zeros skipped) before each survivor in ``k``-bit fields;
  a field equal to ``E = 2^k - 1`` means "skip ``E`` and keep reading". The number of fields
  is ``F(k) = m + Σ_i floor(g_i / E)``, the size ``ceil(F(k) · k / 8)`` bytes, and ``k`` in
  1..16 is chosen to minimise it.

:func:`mask_layout` makes that choice (ties go to the bitmask). Both
:func:`bitsmith.cost.estimate` (with ``masks=``) and the packed export
(:func:`bitsmith.export.bitpack.encode_mask`) call it, so the cost model's bytes and the
packed artifact's bytes are the same number by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_INDEX_BITS = 16


def bitmask_nbytes(total: int) -> int:
    """Bytes of a one-bit-per-weight mask of ``total`` weights: ``ceil(total / 8)``."""
    return math.ceil(total / 8)


def gaps(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each sorted survivor position (int64, same shape)."""
    positions = np.asarray(positions, dtype=np.int64)
    prev = np.concatenate([[-1], positions[:-1]])
    return positions - prev - 1


def index_fields(positions: np.ndarray, k: int) -> int:
    """Number of ``k``-bit fields the relative index of sorted ``positions`` needs."""
    escape = 2 ** k - 1
    return int((gaps(positions) // escape).sum()) + int(np.asarray(positions).size)


def best_index_bits(positions: np.ndarray) -> tuple[int, int]:
    """``(k, bytes)`` of the smallest relative index of sorted survivor ``positions``."""
    sizes = [(math.ceil(index_fields(positions, k) * k / 8), k)
             for k in range(1, MAX_INDEX_BITS + 1)]
    nbytes, k = min(sizes)
    return k, nbytes


@dataclass(frozen=True)
class MaskLayout:
    """How one sparse weight's survivor positions are stored.

    Attributes:
        total: elements of the weight (``n``).
        survivors: nonzero elements (``m``).
        kind: ``"bitmask"`` or ``"index"``.
        index_bits: ``k`` of the relative index (0 for the bitmask).
        nbytes: bytes of the stored mask.
    """

    total: int
    survivors: int
    kind: str
    index_bits: int
    nbytes: int


def mask_layout(keep: np.ndarray) -> MaskLayout:
    """The cheaper encoding of a boolean ``keep`` mask (any shape; flattened row-major)."""
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    positions = np.flatnonzero(keep)
    k, index_bytes = best_index_bits(positions)
    bitmask = bitmask_nbytes(keep.size)
    if bitmask <= index_bytes:
        return MaskLayout(int(keep.size), int(positions.size), "bitmask", 0, bitmask)
    return MaskLayout(int(keep.size), int(positions.size), "index", k, index_bytes)


def survivors_of(weight: object) -> np.ndarray:
    """Boolean keep mask ``(n,)`` of a weight tensor/array: its nonzero entries.

    The packed export stores exactly these positions for a layer the Policy marks sparse.
    """
    if hasattr(weight, "detach"):
        weight = weight.detach().reshape(-1).cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(weight).reshape(-1) != 0
