"""``Quantizer``: the stateful module that applies one scheme to one tensor.

A Quantizer owns a :class:`~bitsmith.policy.QSpec`, the scheme it names and
that scheme's parameters. Its life cycle:

* **weights** (``role="weight"``, channel axis 0): range-based parameters are
  fitted from the weight itself with the spec's observer, and refitted
  whenever the weight changes (training); with ``learnable=True`` they are
  fitted once and then trained (LSQ gradient scaling).
* **activations** (``role="act"``, channel axis 1): range-based parameters
  come from calibration: ``start_calibration()`` makes ``forward`` record
  statistics and pass ``x`` through unchanged; ``load_stats()`` /
  ``finish_calibration()`` turn the statistics into a range. Data-driven
  schemes compute their parameters from every incoming tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bitsmith.calibrate import TensorStats, compute_range
from bitsmith.errors import BitsmithError
from bitsmith.policy import QSpec, block_size
from bitsmith.schemes.base import Params, broadcast_shape, get_scheme, grad_scale
from bitsmith.schemes.blocks import from_blocks, to_blocks
from bitsmith.schemes.uniform import effective_bits


class NotCalibratedError(BitsmithError, RuntimeError):
    """An activation quantizer was used before it was calibrated (a usage error: calibrate
    with ``bitsmith.quantize(..., calibration=...)`` first)."""


class Quantizer(nn.Module):
    """Fake-quantizes one tensor according to ``spec``.

    Args:
        spec: the tensor's QSpec.
        role: ``"weight"`` or ``"act"``.
        channel_axis: axis holding channels (0 for weights, 1 for activations);
            used only when ``spec.granularity == "channel"``.
        label: a name for messages, e.g. ``"layer1.0.conv1.weight"``.
    """

    def __init__(self, spec: QSpec, role: str, channel_axis: int | None = None,
                 label: str = "") -> None:
        super().__init__()
        if role not in ("weight", "act"):
            raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
        self.spec = spec
        self.scheme = get_scheme(spec.scheme)
        self.role = role
        if channel_axis is None:
            channel_axis = 0 if role == "weight" else 1
        self.block_size = block_size(spec.granularity)
        if self.block_size is not None and role != "weight":
            raise ValueError(f"{label or role}: block granularity ({spec.granularity}) is for "
                             "weights; activations use 'tensor' or 'channel'")
        # block mode quantizes the (groups, block) view of the weight per row (axis 0)
        self.axis = (0 if self.block_size is not None
                     else channel_axis if spec.granularity == "channel" else None)
        self.label = label or role
        self.stats: TensorStats | None = None
        self.calibrating = False
        self._param_keys: tuple[str, ...] = ()
        self._fitted_version: tuple[int, int] | None = None
        self._shape_hint: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """True when ``forward`` can quantize (parameters known or data-driven)."""
        return not self.scheme.range_based or bool(self._param_keys)

    def params(self) -> Params:
        return {k: getattr(self, f"p_{k}") for k in self._param_keys}

    def _store(self, params: Params) -> None:
        learnable = set(self.scheme.learnable_keys()) if self.spec.learnable else set()
        for key, value in params.items():
            name = f"p_{key}"
            value = value.detach().clone()
            if key in learnable:
                if isinstance(getattr(self, name, None), nn.Parameter):
                    getattr(self, name).data.copy_(value)
                else:
                    self.__dict__.pop(name, None)
                    self.register_parameter(name, nn.Parameter(value))
            else:
                if name in self._buffers:
                    self._buffers[name] = value
                else:
                    self.register_buffer(name, value)
        self._param_keys = tuple(params)

    def set_range(self, lo: Tensor, hi: Tensor) -> None:
        """Set range-based parameters from a clipping range (per tensor or per channel)."""
        ref_shape = self._param_shape
        lo = torch.as_tensor(lo, dtype=torch.float32).reshape(ref_shape)
        hi = torch.as_tensor(hi, dtype=torch.float32).reshape(ref_shape)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"{self.label}: calibration range is not finite (NaN/inf in data?)")
        self._store(self.scheme.params_from_range(lo, hi, self.spec.bits, self.spec))

    @property
    def _param_shape(self) -> tuple[int, ...]:
        shape = self._shape_hint
        if shape is None:
            raise RuntimeError(f"{self.label}: tensor shape unknown; observe a tensor first")
        return shape

    def _remember_shape(self, x: Tensor) -> None:
        self._shape_hint = broadcast_shape(x, self.axis)

    # ------------------------------------------------------------ calibration
    def start_calibration(self) -> None:
        self._fresh_stats()
        self.calibrating = True

    def _fresh_stats(self) -> None:
        self.stats = TensorStats(channel_axis=self.axis, keep_channel_hist=self.axis is not None)

    def load_stats(self, stats: TensorStats, shape_hint: tuple[int, ...]) -> None:
        """Use statistics gathered elsewhere (e.g. once on the float model)."""
        self.stats = stats
        self._shape_hint = tuple(shape_hint)
        self.finish_calibration()

    def finish_calibration(self) -> None:
        """Turn the collected statistics into parameters and stop recording."""
        self.calibrating = False
        if not self.scheme.range_based:
            return
        if self.stats is None or self.stats.is_empty:
            raise NotCalibratedError(
                f"{self.label}: no calibration data reached this layer; check that the "
                "calibration loader is not empty and that the layer is used in forward()"
            )
        self.set_range(*self._range_of(self.stats))

    def fit_weight(self, w: Tensor) -> None:
        """Fit range-based parameters to a weight tensor with the spec's observer."""
        self._remember_shape(w)
        self.set_range(*self._range_of(TensorStats.of(w.detach(), channel_axis=self.axis)))
        self._fitted_version = (w.data_ptr(), w._version)

    def _range_of(self, stats: TensorStats) -> tuple[Tensor, Tensor]:
        """Clipping range from ``stats`` with the spec's observer, for the bits really used."""
        bits = effective_bits(self.spec.bits, self.spec.reduced_range)
        return compute_range(stats, self.spec.observer, bits, symmetric=self.scheme.symmetric,
                             per_channel=self.axis is not None, percentile=self.spec.percentile)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if self.block_size is not None:
            return self._blocked(x)
        if self.calibrating:
            self._remember_shape(x)
            self.stats.update(x.detach())
            return x
        bits = self.spec.bits
        if not self.scheme.range_based:
            return self.scheme.quantize(x, self.scheme.params_from_data(x, bits, self.axis), bits)
        if self.role == "weight":
            learned = self.spec.learnable and self._param_keys
            if not learned and self._fitted_version != (x.data_ptr(), x._version):
                self.fit_weight(x)
        elif not self._param_keys:
            raise NotCalibratedError(
                f"{self.label}: activation quantizer is not calibrated; run "
                "bitsmith.calibrate(model, data) (or pass calibration data to quantize())"
            )
        params = self.params()
        if self.spec.learnable and self.training:
            numel = x.numel() / max(params[self._param_keys[0]].numel(), 1)
            qmax = float(params["qmax"].max()) if "qmax" in params else 2 ** bits - 1
            factor = 1.0 / math.sqrt(max(numel * qmax, 1.0))
            params = {k: grad_scale(v, factor) if isinstance(v, nn.Parameter) else v
                      for k, v in params.items()}
        return self.scheme.quantize(x, params, bits)

    def _blocked(self, w: Tensor) -> Tensor:
        """Block-wise weight quantization on the ``(groups, block)`` view of ``w``."""
        blocks = to_blocks(w, self.block_size)
        bits = self.spec.bits
        if not self.scheme.range_based:
            params = self.scheme.params_from_data(blocks, bits, 0)
        else:
            fitted = self.spec.learnable and self._param_keys
            if not fitted and self._fitted_version != (w.data_ptr(), w._version):
                self._remember_shape(blocks)
                self.set_range(*self._range_of(TensorStats.of(blocks.detach(), channel_axis=0)))
                self._fitted_version = (w.data_ptr(), w._version)
            params = self.params()
        return from_blocks(self.scheme.quantize(blocks, params, bits), tuple(w.shape))

    def extra_repr(self) -> str:
        return f"{self.spec.short()}, role={self.role}, observer={self.spec.observer}"


class FrozenWeightQuantizer(Quantizer):
    """A weight quantizer whose input is already quantized: ``forward(w) = w``.

    The layer's ``weight`` holds the dequantized values of its integer codes (a model
    loaded from a packed artifact, or one whose rounding was learned by reconstruction),
    so the quantizer must not quantize again; it keeps its parameters, so ``.params()``
    still reports the grid the codes live on.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + ", frozen"


def freeze(quantizer: Quantizer) -> FrozenWeightQuantizer:
    """Turn ``quantizer`` into a :class:`FrozenWeightQuantizer` in place (class swap)."""
    quantizer.__class__ = FrozenWeightQuantizer
    return quantizer  # type: ignore[return-value]
