"""How a Policy rounds its weights: :class:`Rounding`, one of the Policy's model-wide choices.

``method="nearest"`` (the default) rounds every weight to the nearest point of its
scheme's grid. The three *reconstruction* methods instead learn, per weight, whether
to round down or up so that the output of each layer or block stays close to the
float model's on unlabelled calibration data (:mod:`bitsmith.reconstruct`):

=============  =======================================================================
``adaround``   layer by layer (Nagel et al. 2020): rectified-sigmoid soft rounding with
               an annealed regulariser; the loss is taken after the layer's following
               activation (ReLU) when it has one
``brecq``      block by block (Li et al. 2021): residual blocks and the other
               single-entry / single-exit regions of the graph are reconstructed
               together; optional Fisher-weighted output loss
``qdrop``      as ``brecq``, with each activation quantizer's output (and the block
               input) randomly replaced by its float value during reconstruction
               (Wei et al. 2022)
=============  =======================================================================

Every field below changes the resulting model, so all of them are recorded in the
Policy (its fingerprint, JSON and YAML): ``bitsmith.quantize(model, policy,
calibration=data)`` rebuilds the same integer codes for the same data, seed and
thread count. The methods apply to uniform integer-grid weight schemes only
(``uniform_symmetric``, ``uniform_asymmetric``, ``fixed_point``, ``clipq``; per
tensor or per channel); the Policy refuses other weight schemes.

This module is a leaf (no torch import), like :mod:`bitsmith.policy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROUNDING_METHODS = ("nearest", "adaround", "brecq", "qdrop")
RECONSTRUCTION_INPUTS = ("quantized", "float")
# Weight schemes whose values are scale · (q − zero_point) with integer q: learned rounding
# chooses q, so it applies to exactly these (checked against the registry in Policy.check).
GRID_SCHEMES_DOC = "uniform_symmetric, uniform_asymmetric, fixed_point, clipq"


def _policy_error(message: str) -> Exception:
    from bitsmith.policy import PolicyError  # lazy: policy.py imports this module

    return PolicyError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rounding:
    """The weight-rounding method of a Policy and its reconstruction hyper-parameters.

    Attributes:
        method: ``"nearest"``, ``"adaround"``, ``"brecq"`` or ``"qdrop"`` (module docstring).
        iterations: optimisation steps per unit (one layer for ``adaround``, one block
            otherwise).
        batch_size: calibration samples per step.
        lr: Adam learning rate of the rounding variables ``V``.
        reg_weight: ``λ``, weight of the rounding regulariser ``Σ 1 − |2h(V) − 1|^β``.
        beta_start, beta_end: the regulariser's exponent ``β``, annealed from
            ``beta_start`` to ``beta_end`` (cosine) after the warm-up.
        warmup: fraction of ``iterations`` run without the regulariser.
        inputs: ``"quantized"`` (each unit sees the quantized model's input, with every
            earlier unit already reconstructed: AdaRound's asymmetric reconstruction,
            as in AIMET, BRECQ and QDrop) or ``"float"`` (the float model's input, the
            AdaRound paper's first variant; units are then independent of each other).
        drop_prob: ``qdrop`` only: probability of replacing an element of an activation
            quantizer's output (and of the block input) by its float value, in [0, 1).
        learn_act: learn the activation step sizes of the unit's input quantizers jointly
            (LSQ); ``None`` takes the method's default (``False`` for ``adaround``,
            ``True`` for ``brecq`` / ``qdrop``) and is stored resolved.
        act_lr: Adam learning rate of the learned activation step sizes.
        fisher: weight the output error by the squared (``|g| + 1``) gradient of the
            KL divergence between the quantized and float model outputs (BRECQ's
            Fisher-diagonal loss; one extra backward pass over the calibration data).
        seed: seed of the mini-batch sampling and of QDrop's masks (one stream per unit,
            so a resumed run draws the same numbers as an uninterrupted one).
    """

    method: str = "nearest"
    iterations: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    inputs: str = "quantized"
    drop_prob: float = 0.5
    learn_act: bool | None = None
    act_lr: float = 4e-5
    fisher: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learn_act is None:
            object.__setattr__(self, "learn_act", self.method in ("brecq", "qdrop"))
        self.check()

    def check(self, where: str = "rounding") -> None:
        """Raise :class:`~bitsmith.policy.PolicyError` naming ``where`` and the bad field."""
        def bad(field: str, rule: str) -> Exception:
            return _policy_error(f"{where}.{field}={getattr(self, field)!r} {rule}")

        if self.method not in ROUNDING_METHODS:
            raise bad("method", f"is unknown; use one of {ROUNDING_METHODS}")
        for name in ("iterations", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise bad(name, "must be a positive integer")
        for name in ("lr", "act_lr", "beta_start", "beta_end"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise bad(name, "must be a positive number")
        if not _is_number(self.reg_weight) or self.reg_weight < 0:
            raise bad("reg_weight", "must be a number >= 0")
        if self.beta_end > self.beta_start:
            raise bad("beta_end", f"must not exceed beta_start={self.beta_start}")
        if not _is_number(self.warmup) or not 0 <= self.warmup < 1:
            raise bad("warmup", "must be a fraction in [0, 1)")
        if self.inputs not in RECONSTRUCTION_INPUTS:
            raise bad("inputs", f"is unknown; use one of {RECONSTRUCTION_INPUTS}")
        if not _is_number(self.drop_prob) or not 0 <= self.drop_prob < 1:
            raise bad("drop_prob", "must be a probability in [0, 1)")
        for name in ("learn_act", "fisher"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")

    @property
    def learned(self) -> bool:
        """True for the reconstruction methods (anything but ``nearest``)."""
        return self.method != "nearest"

    @property
    def blockwise(self) -> bool:
        """True when units are blocks (``brecq``, ``qdrop``) rather than single layers."""
        return self.method in ("brecq", "qdrop")

    def replace(self, **changes: Any) -> Rounding:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str, where: str = "rounding") -> Rounding:
        """From a mapping of fields, or a bare method name (``rounding: adaround``)."""
        if isinstance(data, str):
            data = {"method": data}
        if not isinstance(data, Mapping):
            raise _policy_error(f"{where}: expected a method name or a mapping of rounding "
                                f"fields, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _policy_error(f"{where}: unknown rounding field(s) {unknown}; known: "
                                f"{sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as err:  # e.g. a field given as a list
            raise _policy_error(f"{where}: {err}") from None

    def short(self) -> str:
        """Compact label, e.g. ``"qdrop 2000it"`` (``"nearest"`` for the default)."""
        if not self.learned:
            return "nearest"
        extra = " +act" if self.learn_act else ""
        return f"{self.method} {self.iterations}it{extra}"


NEAREST = Rounding()
