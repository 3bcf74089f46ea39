"""The Policy: the one plain-data type that couples every part of bitsmith.

A :class:`Policy` maps each quantizable layer, by its qualified module name
(``"layer1.0.conv1"``), to a :class:`LayerSpec`: how its weight and its input
activation are quantized (each a :class:`QSpec`, or ``None`` to keep the tensor
in float) and how sparse its weight is.

Every producer (post-training tuner, differentiable search, DPQ, a user's file)
writes a Policy; every consumer (conversion, cost model, export, report) reads
one. Policies are immutable, hashable, round-trip through JSON and YAML and
validate on construction, so that a bad field is reported with the layer name.

File format ``bitsmith.policy/2`` (YAML or JSON)::

    format: bitsmith.policy/2
    layer_count: 20                 # number of entries under ``layers``
    checksum: sha256:<64 hex>       # of the canonical JSON of ``layers`` (optional)
    rounding: {method: adaround, iterations: 2000, ...}   # optional, see Rounding
    bias_correction: true                                # optional
    calib_size: 1024                                     # optional
    layers: {name: {weight: QSpec | null, act: QSpec | null, sparsity: float} | null}

The header comes first, so a file cut short (a full disk, a copy interrupted) keeps it
and is refused by the layer count or the checksum even when the YAML still parses. A
hand-edited file must drop (or update) its ``checksum`` line. Files of format
``bitsmith.policy/1`` (or without ``format``) still load, without these checks.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bitsmith.errors import InputError

FORMAT = "bitsmith.policy/2"
LEGACY_FORMATS = ("bitsmith.policy/1",)
OPTION_KEYS = ("rounding", "bias_correction", "calib_size")
FILE_KEYS = ("format", "layer_count", "checksum", *OPTION_KEYS, "layers")
GRANULARITIES = ("tensor", "channel", "block<N>")


def block_size(granularity: str) -> int | None:
    """``N`` of a block-wise granularity ``"block<N>"`` (weights: one scale per output channel
    and per ``N`` consecutive inputs), else ``None``."""
    if isinstance(granularity, str) and granularity.startswith("block"):
        digits = granularity[5:]
        if digits.isdigit():
            return int(digits)
    return None


def _valid_granularity(granularity: str) -> bool:
    size = block_size(granularity)
    if size is not None:
        return size >= 16 and size & (size - 1) == 0
    return granularity in ("tensor", "channel")


OBSERVERS = ("minmax", "percentile", "entropy", "mse")


class PolicyError(InputError):
    """A Policy, LayerSpec or QSpec is invalid; the message names the layer and field."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unknown_fields(data: Mapping[str, Any], known: Iterable[str], where: str, what: str
                    ) -> None:
    """Raise :class:`PolicyError` for the first key of ``data`` not in ``known``."""
    from bitsmith.config import closest_match

    known = list(known)
    for key in data:
        if key not in known:
            hint = closest_match(str(key), known)
            did_you = f"did you mean {hint!r}? " if hint else ""
            raise PolicyError(f"{where}: unknown {what} field {key!r}; {did_you}valid: "
                              f"{', '.join(known)}")


@dataclass(frozen=True)
class QSpec:
    """How one tensor (a weight or an input activation) is quantized.

    Attributes:
        scheme: registered scheme name (see ``bitsmith.schemes.available()``),
            e.g. ``"uniform_symmetric"``, ``"uniform_asymmetric"``, ``"binary"``.
        bits: bit width of the stored code, 1..16 (the scheme may narrow this:
            binary is 1 bit only, ternary 2 bits, most others 1..8).
        granularity: ``"tensor"`` (one scale for the tensor), ``"channel"``
            (one scale per output channel of a weight / per channel of an
            activation, axis 1 for activations, axis 0 for weights) or, for
            weights, ``"block<N>"`` (one scale per output channel and per ``N``
            consecutive input weights, ``N`` a power of two >= 16: ONNX Runtime's
            ``MatMulNBits`` layout).
        observer: how the clipping range is calibrated for range-based
            schemes: ``"minmax"``, ``"percentile"``, ``"entropy"`` (KL) or
            ``"mse"``. Data-driven schemes (binary, ternary, ...) ignore it.
        percentile: the percentile of ``|x|`` kept by the ``"percentile"``
            observer, in percent (0, 100].
        pow2_scale: round the scale up to a power of two (shift-only
            rescaling, as in fixed-point hardware and Quantune's
            "symmetric with power-of-two scale").
        reduced_range: use one bit less of the integer range for this tensor
            (ONNX Runtime's ``reduce_range`` for weights on AVX2 u8s8 kernels).
        learnable: make the scale (and offset) trainable with a
            learned-step-size (LSQ) gradient during quantization-aware training.
    """

    scheme: str = "uniform_symmetric"
    bits: int = 8
    granularity: str = "tensor"
    observer: str = "minmax"
    percentile: float = 99.99
    pow2_scale: bool = False
    reduced_range: bool = False
    learnable: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "") -> None:
        """Raise :class:`PolicyError` naming ``where`` and the bad field."""
        prefix = f"{where}: " if where else ""
        if not isinstance(self.scheme, str) or not self.scheme:
            raise PolicyError(f"{prefix}scheme must be a non-empty string, got {self.scheme!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise PolicyError(f"{prefix}bits must be an integer, got {self.bits!r}")
        if not 1 <= self.bits <= 16:
            raise PolicyError(f"{prefix}bits={self.bits} is out of range; use 1..16")
        for name in ("pow2_scale", "reduced_range", "learnable"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"{prefix}{name} must be true or false (unquoted), got "
                                  f"{getattr(self, name)!r}")
        if not _is_number(self.percentile):
            raise PolicyError(f"{prefix}percentile must be a number in (0, 100], got "
                              f"{self.percentile!r}")
        if not isinstance(self.granularity, str) or not _valid_granularity(self.granularity):
            raise PolicyError(
                f"{prefix}granularity={self.granularity!r} is unknown; use 'tensor', 'channel' "
                "or 'block<N>' (weights, N a power of two >= 16, e.g. 'block32')")
        if not isinstance(self.observer, str) or self.observer not in OBSERVERS:
            raise PolicyError(
                f"{prefix}observer={self.observer!r} is unknown; use one of {OBSERVERS}"
            )
        if not 0.0 < float(self.percentile) <= 100.0:
            raise PolicyError(f"{prefix}percentile={self.percentile} must be in (0, 100]")
        # Scheme-specific limits (bit range, per-channel support) live with the
        # scheme; imported lazily so that policy.py stays a leaf module.
        from bitsmith.schemes import get_scheme

        try:
            scheme = get_scheme(self.scheme)
        except KeyError as err:
            raise PolicyError(f"{prefix}{err.args[0]}") from None
        problem = scheme.check_spec(self)
        if problem:
            raise PolicyError(f"{prefix}{problem}")

    def replace(self, **changes: Any) -> QSpec:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> QSpec:
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a mapping of QSpec fields, got {data!r}")
        _unknown_fields(data, [f.name for f in dataclasses.fields(cls)], where, "QSpec")
        try:
            return cls(**dict(data))
        except PolicyError as err:
            raise PolicyError(f"{where}: {err}") from None

    def short(self) -> str:
        """Compact label, e.g. ``"uniform_symmetric:4/ch"``."""
        gran = {"channel": "ch", "tensor": "t"}.get(self.granularity, self.granularity)
        return f"{self.scheme}:{self.bits}/{gran}"


@dataclass(frozen=True)
class LayerSpec:
    """Quantization of one layer: weight, input activation and weight sparsity.

    ``weight=None`` / ``act=None`` keep that tensor in float32.
    ``sparsity`` is the fraction of weights pruned to exactly zero, in [0, 1).
    """

    weight: QSpec | None = field(default_factory=lambda: QSpec())
    act: QSpec | None = field(default_factory=lambda: QSpec(scheme="uniform_asymmetric"))
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        for name in ("weight", "act"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, QSpec):
                raise PolicyError(f"{prefix}{name} must be a QSpec or None, got {value!r}")
        if not _is_number(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
            raise PolicyError(f"{prefix}sparsity={self.sparsity!r} must be a number in [0, 1)")

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.act is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": None if self.weight is None else self.weight.to_dict(),
            "act": None if self.act is None else self.act.to_dict(),
            "sparsity": float(self.sparsity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> LayerSpec:
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a mapping with weight/act/sparsity, got {data!r}")
        _unknown_fields(data, ("weight", "act", "sparsity"), where, "LayerSpec")
        weight = data.get("weight")
        act = data.get("act")
        sparsity = data.get("sparsity", 0.0)
        try:
            return cls(
                weight=None if weight is None else QSpec.from_dict(weight, f"{where}.weight"),
                act=None if act is None else QSpec.from_dict(act, f"{where}.act"),
                sparsity=float(sparsity) if _is_number(sparsity) else sparsity,
            )
        except PolicyError as err:
            if str(err).startswith(f"{where}"):
                raise
            raise PolicyError(f"{where}: {err}") from None


FLOAT = LayerSpec(weight=None, act=None)


# ----------------------------------------------------------------------------- rounding
# How a Policy rounds its weights (a model-wide choice).
ROUNDING_METHODS = ("nearest", "adaround", "brecq", "qdrop")
RECONSTRUCTION_INPUTS = ("quantized", "float")
# Weight schemes whose values are scale · (q − zero_point) with integer q: learned rounding
# chooses q, so it applies to exactly these (checked against the registry by the Policy).
GRID_SCHEMES_DOC = "uniform_symmetric, uniform_asymmetric, fixed_point, clipq"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rounding:
    """The weight-rounding method of a Policy and its reconstruction hyper-parameters.

    ``method="nearest"`` (the default) rounds every weight to the nearest point of its
    scheme's grid. The reconstruction methods learn, per weight, whether to round down or
    up so that each layer's (``adaround``) or each block's (``brecq``; ``qdrop`` also drops
    activation quantization at random while learning) output stays close to the float
    model's on unlabelled calibration data (:mod:`bitsmith.reconstruct`,
    ``docs/reconstruction.md``). Every field changes the resulting model, so all of them
    are stored in the Policy: ``bitsmith.quantize(model, policy, calibration=data)``
    rebuilds the same integer codes for the same data, seed and thread count. Learned
    rounding applies to uniform integer-grid weight schemes only (``uniform_symmetric``,
    ``uniform_asymmetric``, ``fixed_point``, ``clipq``; per tensor or per channel); the
    Policy refuses other weight schemes.

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
            return PolicyError(f"{where}.{field}={getattr(self, field)!r} {rule}")

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
            raise PolicyError(f"{where}: expected a method name or a mapping of rounding "
                                f"fields, got {data!r}")
        _unknown_fields(data, [f.name for f in dataclasses.fields(cls)], where, "rounding")
        try:
            return cls(**dict(data))
        except TypeError as err:  # e.g. a field given as a list
            raise PolicyError(f"{where}: {err}") from None

    def short(self) -> str:
        """Compact label, e.g. ``"qdrop 2000it"`` (``"nearest"`` for the default)."""
        if not self.learned:
            return "nearest"
        extra = " +act" if self.learn_act else ""
        return f"{self.method} {self.iterations}it{extra}"


NEAREST = Rounding()


class Policy(Mapping[str, LayerSpec]):
    """An immutable, ordered mapping ``layer name -> LayerSpec``, plus model-wide choices.

    Layers absent from a Policy stay in float. Construct directly from a dict,
    from a LayerTable with :meth:`uniform`, or load with :meth:`load`.

    Model-wide choices (keyword-only; each changes the model, so each is validated,
    serialised and part of the fingerprint; files without them load with the defaults):

    * ``rounding``: a :class:`~bitsmith.policy.Rounding` (or a method name):
      ``"nearest"`` (default), or learned rounding by reconstruction
      (``"adaround"``, ``"brecq"``, ``"qdrop"``) with its hyper-parameters;
    * ``bias_correction``: after rounding, shift each quantized layer's bias by the
      mean output error of its weights on the calibration data (empirical bias
      correction, :mod:`bitsmith.reconstruct.bias`);
    * ``calib_size``: use only the first ``calib_size`` calibration inputs (ranges,
      bias correction and reconstruction); ``None`` uses all that are given.
    """

    __slots__ = ("_layers", "_hash", "_rounding", "_bias_correction", "_calib_size")

    def __init__(self, layers: Mapping[str, LayerSpec] | Iterable[tuple[str, LayerSpec]] = (),
                 *, rounding: Rounding | str = NEAREST, bias_correction: bool = False,
                 calib_size: int | None = None):
        items = layers.items() if isinstance(layers, Mapping) else layers
        checked: dict[str, LayerSpec] = {}
        for name, spec in items:
            if not isinstance(name, str) or not name:
                raise PolicyError(f"layer names must be non-empty strings, got {name!r}")
            if not isinstance(spec, LayerSpec):
                raise PolicyError(f"{name}: expected a LayerSpec, got {type(spec).__name__}")
            checked[name] = spec
        self._layers = checked
        self._hash: int | None = None
        self._rounding = Rounding(rounding) if isinstance(rounding, str) else rounding
        self._bias_correction = bias_correction
        self._calib_size = calib_size
        self._check_options()

    def _check_options(self) -> None:
        if not isinstance(self._rounding, Rounding):
            raise PolicyError(f"rounding must be a Rounding or a method name, got "
                              f"{self._rounding!r}")
        if not isinstance(self._bias_correction, bool):
            raise PolicyError(f"bias_correction={self._bias_correction!r} must be true or false")
        size = self._calib_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise PolicyError(f"calib_size={size!r} must be a positive integer (or null: all)")
        if self._rounding.learned:
            from bitsmith.schemes import get_scheme

            for name, spec in self._layers.items():
                w = spec.weight
                if w is not None and not (get_scheme(w.scheme).integer_grid
                                          and get_scheme(w.scheme).range_based):
                    raise PolicyError(
                        f"{name}.weight: rounding={self._rounding.method!r} learns the rounding "
                        f"of a uniform integer grid ({GRID_SCHEMES_DOC}); scheme "
                        f"{w.scheme!r} has none. Use rounding='nearest' or a uniform weight "
                        "scheme for this layer")
                if w is not None and w.granularity not in ("tensor", "channel"):
                    raise PolicyError(
                        f"{name}.weight: rounding={self._rounding.method!r} learns per-tensor "
                        f"or per-channel grids; granularity={w.granularity!r} is not one. Use "
                        "rounding='nearest' or granularity 'channel' for this layer")

    # Model-wide choices -------------------------------------------------------
    @property
    def rounding(self) -> Rounding:
        return self._rounding

    @property
    def bias_correction(self) -> bool:
        return self._bias_correction

    @property
    def calib_size(self) -> int | None:
        return self._calib_size

    def options(self) -> dict[str, Any]:
        """The model-wide choices as keyword arguments of the constructor."""
        return {"rounding": self._rounding, "bias_correction": self._bias_correction,
                "calib_size": self._calib_size}

    def with_options(self, **changes: Any) -> Policy:
        """A copy with some model-wide choices changed (``rounding=``, ``bias_correction=``,
        ``calib_size=``), validated."""
        unknown = sorted(set(changes) - set(self.options()))
        if unknown:
            raise PolicyError(f"unknown policy option(s) {unknown}; known: "
                              f"{sorted(self.options())}")
        return Policy(self._layers, **{**self.options(), **changes})

    # Mapping protocol -------------------------------------------------------
    def __getitem__(self, name: str) -> LayerSpec:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self._layers == other._layers and self.options() == other.options()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self.fingerprint())
        return self._hash

    def __repr__(self) -> str:
        return f"Policy({len(self)} layers, {self.fingerprint()[:10]})"

    # Construction helpers ---------------------------------------------------
    @classmethod
    def uniform(
        cls,
        layer_names: Iterable[str],
        weight: QSpec | None = QSpec(),
        act: QSpec | None = QSpec(scheme="uniform_asymmetric"),
        **options: Any,
    ) -> Policy:
        """Every named layer gets the same weight / activation spec (``options``: the
        model-wide choices, see the class docstring)."""
        spec = LayerSpec(weight=weight, act=act)
        return cls(((name, spec) for name in layer_names), **options)

    def with_layers(self, updates: Mapping[str, LayerSpec]) -> Policy:
        """A copy in which ``updates`` replace (or add) layers (model-wide choices kept)."""
        merged = dict(self._layers)
        merged.update(updates)
        return Policy(merged, **self.options())

    def override(self, pattern: str, spec: LayerSpec, layer_types: Mapping[str, str] | None = None
                 ) -> Policy:
        """A copy where every layer matching ``pattern`` gets ``spec``.

        ``pattern`` is a shell-style glob over layer names (``"layer3.*"``), or
        ``"type:Linear"`` to match by module type name, which needs
        ``layer_types`` (name -> type name, e.g. from a LayerTable).
        Raises :class:`PolicyError` if nothing matches.
        """
        names = select_layers(self._layers, pattern, layer_types)
        return self.with_layers({n: spec for n in names})

    # Validation against a model --------------------------------------------
    def check_layers(self, available: Iterable[str]) -> None:
        """Raise if the Policy names a layer that is not a quantizable layer of the model."""
        available = list(available)
        known = set(available)
        missing = [n for n in self._layers if n not in known]
        if missing:
            hint = ", ".join(available[:8]) + (" ..." if len(available) > 8 else "")
            raise PolicyError(
                f"the policy names layer(s) not found among the model's quantizable layers: "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. Available: {hint}"
            )

    # Serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``bitsmith.policy/2`` file content (see the module docstring).

        The model-wide choices appear only when they differ from the defaults, between
        the header and the layers."""
        layers = {n: s.to_dict() for n, s in self._layers.items()}
        return {"format": FORMAT, "layer_count": len(layers), "checksum": _checksum(layers),
                **self._options_dict(), "layers": layers}

    def _options_dict(self) -> dict[str, Any]:
        """The model-wide choices that differ from the defaults, as plain data."""
        out: dict[str, Any] = {}
        if self._rounding != NEAREST:
            out["rounding"] = self._rounding.to_dict()
        if self._bias_correction:
            out["bias_correction"] = True
        if self._calib_size is not None:
            out["calib_size"] = self._calib_size
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "policy") -> Policy:
        """Build from file content; ``source`` (e.g. the file name) prefixes every error.

        A ``bitsmith.policy/2`` mapping must carry ``layer_count`` (and its ``checksum``,
        when present, must match); ``bitsmith.policy/1`` and format-less mappings are read
        without these checks.
        """
        if not isinstance(data, Mapping) or "layers" not in data:
            raise PolicyError(f"{source}: a policy must be a mapping with a 'layers' key "
                              f"(got {type(data).__name__}); is this a bitsmith policy file?")
        _unknown_fields(data, FILE_KEYS, source, "policy file")
        layers = data["layers"]
        if not isinstance(layers, Mapping):
            raise PolicyError(f"{source}: 'layers' must map layer names to layer specs")
        _check_header(data, layers, source)
        try:
            policy = cls(
                ((name, FLOAT if spec is None else LayerSpec.from_dict(spec, str(name)))
                 for name, spec in layers.items()),
                rounding=Rounding.from_dict(data.get("rounding", {})),
                bias_correction=data.get("bias_correction", False),
                calib_size=data.get("calib_size"),
            )
        except PolicyError as err:
            raise PolicyError(f"{source}: {err}") from None
        _check_checksum(data, layers, source)    # after parsing: the layers' shape is bounded
        return policy

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> Policy:
        from bitsmith.config import ConfigError, parse_structured_text

        try:
            data = parse_structured_text(text, source, json_only=True)
        except ConfigError as err:
            raise PolicyError(str(err)) from None
        return cls.from_dict(data, source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "policy") -> Policy:
        from bitsmith.config import ConfigError, parse_structured_text

        try:
            data = parse_structured_text(text, source)
        except ConfigError as err:
            raise PolicyError(str(err)) from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        """Write as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
        from bitsmith.atomic import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix == ".json" else self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy file (YAML, or JSON for ``.json``); any problem is a PolicyError."""
        from bitsmith.config import ConfigError, read_structured_file

        try:
            data = read_structured_file(path, "policy file")
        except ConfigError as err:
            raise PolicyError(str(err)) from None
        return cls.from_dict(data, f"policy file {path}")

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the layers (and of the model-wide choices that
        differ from the defaults): equal policies have equal fingerprints (a policy with
        default choices keeps the value format 1 computed, so stored fingerprints stay
        valid)."""
        canon = json.dumps({"format": "bitsmith.policy/1", **self._options_dict(),
                            "layers": {n: s.to_dict() for n, s in self._layers.items()}},
                           sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    # Inspection -------------------------------------------------------------
    def diff(self, other: Policy) -> dict[str, tuple[LayerSpec | None, LayerSpec | None]]:
        """Layers whose spec differs: ``name -> (spec in self, spec in other)``."""
        names = list(self._layers) + [n for n in other if n not in self._layers]
        return {
            n: (self._layers.get(n), other._layers.get(n))
            for n in names
            if self._layers.get(n) != other._layers.get(n)
        }

    def table(self) -> str:
        """A plain-text table: one row per layer."""
        rows = [("layer", "weight", "act", "sparsity")]
        for name, spec in self._layers.items():
            rows.append((
                name,
                "float" if spec.weight is None else spec.weight.short(),
                "float" if spec.act is None else spec.act.short(),
                f"{spec.sparsity:.2f}",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if self._rounding != NEAREST or self._bias_correction or self._calib_size is not None:
            lines.append(f"rounding: {self._rounding.short()}; bias correction: "
                         f"{'on' if self._bias_correction else 'off'}; calibration inputs: "
                         f"{'all' if self._calib_size is None else self._calib_size}")
        return "\n".join(lines)


def _checksum(layers: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of a policy file's ``layers`` mapping."""
    try:
        canon = json.dumps(layers, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):
        canon = repr(layers)   # not JSON data at all: cannot match any stored checksum
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def _check_header(data: Mapping[str, Any], layers: Mapping[str, Any], source: str) -> None:
    """Refuse a ``bitsmith.policy/2`` file whose layers do not match its header."""
    fmt = data.get("format")
    if fmt is None or fmt in LEGACY_FORMATS:
        return
    if fmt != FORMAT:
        raise PolicyError(f"{source}: unsupported format {fmt!r}; this bitsmith reads "
                          f"{FORMAT} and {', '.join(LEGACY_FORMATS)}")
    count = data.get("layer_count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise PolicyError(f"{source}: format {FORMAT} needs an integer 'layer_count', got "
                          f"{count!r}; re-save the policy")
    if count != len(layers):
        raise PolicyError(f"{source}: has {len(layers)} layer(s) but its header says {count}: "
                          "the file is truncated or damaged; write it again")


def _check_checksum(data: Mapping[str, Any], layers: Mapping[str, Any], source: str) -> None:
    """Refuse a ``bitsmith.policy/2`` file whose layers do not match its ``checksum``."""
    if data.get("format") != FORMAT:
        return
    stored = data.get("checksum")
    if stored is not None and stored != _checksum(layers):
        raise PolicyError(f"{source}: the layers do not match the file's checksum (truncated "
                          "or damaged; if you edited it by hand, delete the 'checksum' line)")


def select_layers(
    names: Iterable[str], pattern: str, layer_types: Mapping[str, str] | None = None
) -> list[str]:
    """Names matching a glob ``pattern`` or ``"type:<ModuleType>"``; raises if none match."""
    names = list(names)
    if pattern.startswith("type:"):
        wanted = pattern[len("type:"):]
        if layer_types is None:
            raise PolicyError(f"pattern {pattern!r} selects by type but no layer types were given")
        hits = [n for n in names if layer_types.get(n) == wanted]
    else:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not hits:
        raise PolicyError(f"pattern {pattern!r} matches no layer; layers are: {names[:8]}")
    return hits


FIRST_LAST_CHOICES = ("same", "int8", "float")
INT8 = LayerSpec(weight=QSpec("uniform_symmetric", 8, "channel"),
                 act=QSpec("uniform_asymmetric", 8))


def build_policy(
    layer_names: Iterable[str],
    weight: QSpec | None = QSpec(),
    act: QSpec | None = QSpec(scheme="uniform_asymmetric"),
    *,
    first_last: str = "same",
    overrides: Mapping[str, LayerSpec] | None = None,
    layer_types: Mapping[str, str] | None = None,
    **options: Any,
) -> Policy:
    """A Policy for ``layer_names`` (in execution order) with the usual knobs.

    Args:
        weight, act: the spec of every layer (``None`` keeps that tensor float).
        first_last: ``"same"`` (no special case), ``"int8"`` (first and last
            layer at 8-bit per-channel weights / 8-bit activations) or
            ``"float"`` (first and last layer kept in float).
        overrides: ``pattern -> LayerSpec`` applied in order after the above;
            patterns are globs over names or ``"type:<Module>"``
            (needs ``layer_types``).
        options: the Policy's model-wide choices (``rounding=``, ``bias_correction=``,
            ``calib_size=``).
    """
    names = list(layer_names)
    if not names:
        raise PolicyError("the model has no quantizable layers to build a policy for")
    if first_last not in FIRST_LAST_CHOICES:
        raise PolicyError(f"first_last={first_last!r} is unknown; use one of {FIRST_LAST_CHOICES}")
    policy = Policy.uniform(names, weight, act, **options)
    if first_last != "same":
        edge = INT8 if first_last == "int8" else FLOAT
        policy = policy.with_layers({names[0]: edge, names[-1]: edge})
    for pattern, spec in (overrides or {}).items():
        policy = policy.override(pattern, spec, layer_types)
    return policy
