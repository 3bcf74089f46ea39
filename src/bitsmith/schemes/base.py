"""The quantizer-scheme interface, the registry, and straight-through helpers.

A *scheme* is stateless quantizer math. Its parameters (scales, zero points,
clipping thresholds, ...) are plain tensors in a ``dict`` whose shapes
broadcast against the quantized tensor: ``()``-like (all ones) per tensor, or
size ``C`` on the channel axis and 1 elsewhere per channel. The stateful
holder of those parameters is :class:`bitsmith.graph.quantizer.Quantizer`.

Two kinds of scheme exist:

* **range-based** (``range_based = True``): parameters follow from a clipping
  range ``[lo, hi]`` that an observer calibrates (min/max, percentile, KL,
  MSE); see :meth:`Scheme.params_from_range`.
* **data-driven** (``range_based = False``): parameters are statistics of the
  tensor itself (mean ``|x|``, std, ...), recomputed from the current tensor on
  every call; see :meth:`Scheme.params_from_data`.

Schemes whose dequantized values are ``scale * (q - zero_point)`` with integer
``q`` in ``[qmin, qmax]`` set ``integer_grid = True`` and implement
:meth:`Scheme.grid`; only those can run on integer runtimes (ONNX QDQ).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch
from torch import Tensor

Params = dict[str, Tensor]


class SpecLike(Protocol):
    """The fields of a :class:`bitsmith.policy.QSpec` that schemes read (schemes sit below
    the Policy, so they name the fields instead of importing the class)."""

    @property
    def bits(self) -> int: ...
    @property
    def granularity(self) -> str: ...
    @property
    def pow2_scale(self) -> bool: ...
    @property
    def reduced_range(self) -> bool: ...


_REGISTRY: dict[str, Scheme] = {}


def register(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: register a scheme under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    if cls.name in _REGISTRY:
        raise ValueError(f"a scheme named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get_scheme(name: str) -> Scheme:
    """The registered scheme called ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown quantization scheme {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available() -> list[str]:
    """Names of all registered schemes."""
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------
# Straight-through estimator helpers
# --------------------------------------------------------------------------
def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass.

    Without autograd (inference, calibration, evaluation) it is a plain ``torch.round``:
    the straight-through form costs two extra passes over ``x``.
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` with sign(0) = +1, and a clipped identity gradient (|x| <= 1), as in BNN."""
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    soft = x.clamp(-1.0, 1.0)
    return soft + (hard - soft).detach()


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """Value of ``x``, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return x * factor + (x - x * factor).detach()


def reduce_dims(x: Tensor, axis: int | None) -> tuple[int, ...]:
    """Dimensions to reduce over: all of them (per tensor) or all but ``axis`` (per channel)."""
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def broadcast_shape(x: Tensor, axis: int | None) -> tuple[int, ...]:
    """Shape of a per-tensor (all ones) or per-channel (C on ``axis``) parameter for ``x``."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis % x.dim()] = x.shape[axis]
    return tuple(shape)


class Scheme(ABC):
    """One quantizer's math. Subclasses set the class attributes and implement the methods.

    Class attributes:
        name: registry key.
        min_bits, max_bits: supported bit widths (inclusive).
        per_channel: whether per-channel parameters make sense.
        range_based: parameters come from a calibrated ``[lo, hi]`` range.
        integer_grid: values are ``scale * (q - zero_point)`` with integer ``q``.
        symmetric: ``Q(-x) == -Q(x)`` for the same parameters.
        float_params: float32 scalars stored per group (per tensor or per
            channel) in a deployed model, for the cost model; use
            :meth:`Scheme.float_params_for` where it may depend on the bit width.
        zero_point_bytes: bytes of integer zero point stored per group.
    """

    name: ClassVar[str] = ""
    min_bits: ClassVar[int] = 1
    max_bits: ClassVar[int] = 8
    per_channel: ClassVar[bool] = True
    range_based: ClassVar[bool] = True
    integer_grid: ClassVar[bool] = False
    symmetric: ClassVar[bool] = True
    float_params: ClassVar[int] = 1
    zero_point_bytes: ClassVar[int] = 0

    def check_spec(self, spec: SpecLike) -> str | None:
        """A message saying what in ``spec`` this scheme cannot do, or ``None``."""
        if not self.min_bits <= spec.bits <= self.max_bits:
            span = (f"{self.min_bits}" if self.min_bits == self.max_bits
                    else f"{self.min_bits}..{self.max_bits}")
            return f"scheme {self.name!r} supports bits={span}, got bits={spec.bits}"
        if spec.granularity != "tensor" and not self.per_channel:
            return (f"scheme {self.name!r} has no per-channel form (nor a block form); use "
                    "granularity='tensor'")
        if spec.pow2_scale and not self.integer_grid:
            return f"pow2_scale needs an integer-grid scheme, {self.name!r} is not one"
        return None

    def params_from_range(self, lo: Tensor, hi: Tensor, bits: int, spec: SpecLike) -> Params:
        """Parameters for the clipping range ``[lo, hi]`` (broadcastable tensors)."""
        raise NotImplementedError(f"scheme {self.name!r} is not range-based")

    def params_from_data(self, x: Tensor, bits: int, axis: int | None) -> Params:
        """Parameters computed from ``x`` itself; ``axis`` is the channel axis or ``None``."""
        raise NotImplementedError(f"scheme {self.name!r} is range-based; calibrate a range")

    @abstractmethod
    def quantize(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Quantize-dequantize ``x`` (same shape, float) with straight-through gradients."""

    def grid(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int]:
        """``(scale, zero_point, qmin, qmax)`` of an integer-grid scheme."""
        raise NotImplementedError(f"scheme {self.name!r} has no integer grid")

    def learnable_keys(self) -> tuple[str, ...]:
        """Parameter names that may be trained (LSQ-style) during fine-tuning."""
        return ()

    def float_params_for(self, bits: int) -> int:
        """Float32 scalars stored per group at ``bits`` bits (the cost model's count).

        The class attribute :attr:`float_params` by default; schemes whose count
        depends on the bit width (``resq``: one scale per binary base) override it.
        """
        return self.float_params

    # ------------------------------------------------------------------ codes
    # Used by the packed export (``bitsmith.export``): every scheme can turn a
    # tensor into integer codes in ``[0, 2^bits)`` and back, so that weights are
    # stored bit-packed at their policy bit width and restored exactly.
    def stored_params(self, bits: int) -> tuple[str, ...]:
        """Names of the float32 parameters stored per group in a deployed model.

        ``len(stored_params(bits)) == float_params_for(bits)``; together with
        the integer zero point (``zero_point_bytes``) and the QSpec they are
        everything :meth:`decode` needs. Range-based helpers such as ``qmax``
        follow from the QSpec and are not stored.
        """
        raise NotImplementedError(f"scheme {self.name!r} does not define its stored parameters")

    def encode(self, x: Tensor, params: Params, bits: int) -> Tensor:
        """Integer codes of ``quantize(x, params, bits)``: int64, shape of ``x``, ``[0, 2^bits)``.

        The default works for integer-grid schemes: ``code = q - qmin`` with
        ``q = round(x̂ / scale) + zero_point``.
        """
        if not self.integer_grid:
            raise NotImplementedError(f"scheme {self.name!r} does not implement encode")
        scale, zero_point, qmin, _ = self.grid(params, bits)
        with torch.no_grad():
            x_hat = self.quantize(x.detach().float(), params, bits)
            q = torch.round(x_hat / scale) + torch.round(zero_point)
        return (q - qmin).to(torch.int64)

    def decode(self, codes: Tensor, params: Params, bits: int) -> Tensor:
        """Float32 values of integer ``codes``; ``decode(encode(x)) == quantize(x)`` bit for bit.

        The default works for integer-grid schemes: ``(code + qmin - zero_point) · scale``,
        the same product :meth:`quantize` computes.
        """
        if not self.integer_grid:
            raise NotImplementedError(f"scheme {self.name!r} does not implement decode")
        scale, zero_point, qmin, _ = self.grid(params, bits)
        q = codes.to(torch.float32) + qmin - torch.round(zero_point)
        return q * scale

    def lattice(self, params: Params, bits: int) -> tuple[Tensor, Tensor, int, int] | None:
        """An integer grid ``(scale, zero_point, qmin, qmax)`` that holds every level, or ``None``.

        Integer-grid schemes return :meth:`grid`; schemes whose levels happen to
        lie on an integer grid (binary, ternary, low-bit power-of-two) override
        it, so that an integer runtime can run them exactly.
        """
        return self.grid(params, bits) if self.integer_grid else None


class TwoStatisticScheme(Scheme):
    """Base of the data-driven, asymmetric schemes with two float statistics per group
    (``mu_l2q``: mean and std; ``zoomq``: min and max)."""

    range_based = False
    symmetric = False
    float_params = 2
