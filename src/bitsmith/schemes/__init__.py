"""Quantizer schemes, registered by name. See ``docs/schemes.md`` for the formulas."""

from bitsmith.schemes import uniform  # noqa: F401  (registers the uniform schemes)
from bitsmith.schemes.base import (
    Params,
    Scheme,
    available,
    get_scheme,
    grad_scale,
    register,
    round_ste,
    sign_ste,
)

__all__ = [
    "Params", "Scheme", "available", "get_scheme", "grad_scale", "register", "round_ste",
    "sign_ste",
]
