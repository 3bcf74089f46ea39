"""Quantizer schemes, registered by name. See ``docs/schemes.md`` for the formulas.

Importing this package registers every built-in scheme (AutoQNN's candidate
set plus the two integer-runtime uniform ones): ``uniform_symmetric``,
``uniform_asymmetric``, ``binary``, ``ternary``, ``resq``, ``fixed_point``,
``mu_l2q``, ``zoomq``, ``clipq`` and ``pot``.
"""

# Imported for their side effect: each module registers its schemes.
from bitsmith.schemes import (  # noqa: F401
    binary,
    clipped,
    fixed_point,
    log,
    statistical,
    uniform,
    zoom,
)
from bitsmith.schemes.base import (
    Params,
    Scheme,
    available,
    broadcast_shape,
    get_scheme,
    grad_scale,
    reduce_dims,
    register,
    round_ste,
    sign_ste,
)

__all__ = [
    "Params", "Scheme", "available", "broadcast_shape", "get_scheme", "grad_scale",
    "reduce_dims", "register", "round_ste", "sign_ste",
]
