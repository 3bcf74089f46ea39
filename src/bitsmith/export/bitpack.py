"""Bit packing of integer codes and the two encodings of a sparsity mask.

Codes are packed little-endian: code ``i`` occupies bits ``[i·b, (i+1)·b)`` of
the stream, least significant bit first, so ``n`` codes of ``b`` bits take
exactly ``ceil(n·b / 8)`` bytes (the cost model's count). 8-bit codes are the
bytes themselves.

A sparse weight stores only its surviving (nonzero) positions' codes plus
their locations, in the cheaper of:

* **bitmask**: one bit per weight, ``ceil(n / 8)`` bytes;
* **relative index**: the gap before each survivor in ``k``-bit fields, a
  field equal to ``2^k - 1`` meaning "skip ``2^k - 1`` and keep reading" (so
  long runs need no filler weights); ``k`` (1..16) is chosen to minimise the
  size. This is Deep Compression's relative index (Han et al., ICLR 2016)
  with an escape instead of filler zeros.
"""

from __future__ import annotations

import math

import numpy as np

# The mask sizing rules live in the cost model so that both sides share one function.
from bitsmith.cost.sparse import (  # noqa: F401 - re-exported
    best_index_bits,
    bitmask_nbytes,
    gaps,
    index_fields,
    mask_layout,
)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits: ``ceil(count · bits / 8)``."""
    return math.ceil(count * bits / 8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes in ``[0, 2^bits)`` (any shape, flattened) into uint8 ``(ceil(n·b/8),)``."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) for {bits}-bit packing")
    if bits == 8:
        return flat.astype(np.uint8)
    planes = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (n, b), LSB first
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as int64, shape ``(count,)``."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != packed_nbytes(count, bits):
        raise ValueError(f"expected {packed_nbytes(count, bits)} bytes for {count} "
                         f"{bits}-bit codes, got {data.size}")
    if bits == 8:
        return data.astype(np.int64)
    planes = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits)
    return planes.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def encode_index(positions: np.ndarray, k: int) -> np.ndarray:
    """Relative index of sorted ``positions`` as packed ``k``-bit fields (uint8)."""
    escape = 2 ** k - 1
    g = gaps(np.asarray(positions, dtype=np.int64))
    skips = g // escape
    fields = np.full(int(skips.sum()) + g.size, escape, dtype=np.int64)
    ends = np.cumsum(skips + 1) - 1  # where each survivor's terminating field goes
    fields[ends] = g - skips * escape
    return pack_bits(fields, k)


def decode_index(data: np.ndarray, k: int, survivors: int) -> np.ndarray:
    """Positions (int64, ``(survivors,)``) from a relative index made by :func:`encode_index`."""
    escape = 2 ** k - 1
    nfields = (np.asarray(data).size * 8) // k
    fields = unpack_bits(data, k, nfields) if nfields else np.zeros(0, np.int64)
    ends = np.flatnonzero(fields != escape)[:survivors]
    if ends.size != survivors:
        raise ValueError("relative index holds fewer survivors than the metadata says")
    return np.cumsum(fields)[ends] + np.arange(1, survivors + 1) - 1


def encode_mask(keep: np.ndarray) -> tuple[str, int, np.ndarray]:
    """The cheaper encoding of a boolean ``keep`` mask: ``("bitmask"|"index", k, uint8 data)``.

    ``k`` is 0 for the bitmask. The choice (and so the size) is
    :func:`bitsmith.cost.sparse.mask_layout`'s, the function the cost model uses.
    """
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    chosen = mask_layout(keep)
    if chosen.kind == "bitmask":
        data = np.packbits(keep, bitorder="little")
    else:
        data = encode_index(np.flatnonzero(keep), chosen.index_bits)
    if data.size != chosen.nbytes:  # pragma: no cover - guards the shared size formula
        raise AssertionError(f"mask encoding wrote {data.size} bytes, its size rule says "
                             f"{chosen.nbytes}")
    return chosen.kind, chosen.index_bits, data


def decode_mask(kind: str, k: int, data: np.ndarray, total: int, survivors: int) -> np.ndarray:
    """Boolean keep mask ``(total,)`` from :func:`encode_mask`'s output."""
    if kind == "bitmask":
        if np.asarray(data).size != bitmask_nbytes(total):
            raise ValueError("bitmask has the wrong length")
        return np.unpackbits(np.asarray(data, np.uint8), count=total, bitorder="little"
                             ).astype(bool)
    if kind == "index":
        keep = np.zeros(total, dtype=bool)
        positions = decode_index(data, k, survivors)
        if positions.size and (positions[-1] >= total or positions.min() < 0):
            raise ValueError("relative index points outside the weight")
        keep[positions] = True
        return keep
    raise ValueError(f"unknown mask encoding {kind!r}")
