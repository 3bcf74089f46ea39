"""Small numeric helpers shared by the scheme modules (private)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Floor for divisors (scales, spans, standard deviations), so that all-zero
#: tensors quantize to zeros instead of NaN.
TINY = 1e-12

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (``TINY`` underflows in float16), else ``x.dtype``."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def upcast(x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """``x`` and ``others`` in :func:`compute_dtype` of ``x`` (differentiable casts)."""
    dtype = compute_dtype(x)
    return tuple(t.to(dtype) for t in (x, *others))
