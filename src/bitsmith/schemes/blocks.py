"""Block-wise weight layout: one quantization group per output channel and per ``B`` inputs.

A weight ``(C_out, ...)`` is flattened to ``(C_out, K)``, zero-padded to a multiple of
``B`` along ``K`` and viewed as ``(C_out · ceil(K / B), B)`` rows, each row one group; the
per-channel machinery (axis 0) then quantizes each block with its own parameters. This is
ONNX Runtime's ``MatMulNBits`` layout for a Linear weight ``(N, K)``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def block_count(shape: tuple[int, ...], block: int) -> int:
    """Groups of a weight of ``shape``: ``C_out · ceil(K / block)``."""
    k = math.prod(shape[1:])
    return shape[0] * math.ceil(k / block)


def to_blocks(w: Tensor, block: int) -> Tensor:
    """``(C_out, ...)`` -> ``(C_out · ceil(K / block), block)``, zero padding at the end of K."""
    flat = w.reshape(w.shape[0], -1)
    pad = (-flat.shape[1]) % block
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.reshape(-1, block)


def from_blocks(blocks: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_blocks` (padding dropped)."""
    k = math.prod(shape[1:])
    return blocks.reshape(shape[0], -1)[:, :k].reshape(shape)
