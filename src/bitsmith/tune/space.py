"""The post-training search space, declared in one place: :class:`TuneSpace`.

A *configuration* is a plain ``dict`` of parameter name -> choice (what an
Optuna trial suggests); :meth:`TuneSpace.to_policy` turns it into a
:class:`~bitsmith.policy.Policy` for a given model. The space contains
Quantune's (Lee et al., FGCS 2022) and goes beyond it:

=================  ==========================================================  ==============
parameter          choices                                                     Quantune
=================  ==========================================================  ==============
``scheme``         ``asymmetric``, ``symmetric``, ``symmetric_uint8``,          all four
                   ``symmetric_pow2``
``act_clip``       ``minmax`` (max), ``entropy`` (KL), ``percentile``, ``mse``  max, KL
``weight_clip``    same observers, for the weights                             (max)
``granularity``    weights ``tensor`` / ``channel`` (activations per tensor)   both
``calib_size``     calibration images, e.g. 1, 1000, 4000                      1/1000/10000
``float_layers``   ``none``, ``first``, ``last``, ``first_last``: layers kept   int8 / int8 +
                   in float                                                    float layers
``weight_bits``    one global width, or ``w:<layer>`` per layer (mixed         int8 only
                   precision), choices such as 2..8 and ``"float"``
``act_bits``       likewise, ``a:<layer>`` per layer                            int8 only
``rounding``       ``nearest``, ``adaround``, ``brecq``, ``qdrop``: learned     (nearest)
                   rounding by reconstruction (``docs/reconstruction.md``)
=================  ==========================================================  ==============

Two boolean knobs (default: ``false`` only): ``bias_correction`` shifts each
layer's bias by the expected output error of its quantized weights
(:mod:`bitsmith.reconstruct.bias`); ``reduced_range`` makes weights use one bit
less of their integer range (ONNX Runtime's AVX2 ``reduce_range``).

The Policy of a configuration carries every choice that changes the model: the
per-layer specs, ``bias_correction``, ``calib_size`` (the first N calibration
inputs) and ``rounding`` (with ``rounding_iterations`` steps per unit; a learned
rounding method takes minutes per configuration, see ``docs/reconstruction.md``),
so ``bitsmith.quantize(model, policy, calibration=data)`` rebuilds the evaluated
model from the same calibration data.

Scheme mapping (see ``docs/tune.md``):

* ``asymmetric``: ``uniform_asymmetric`` weights and activations;
* ``symmetric``: ``uniform_symmetric`` (signed) weights and activations;
* ``symmetric_uint8``: ``uniform_symmetric`` weights; an activation whose
  calibration minimum is >= 0 (post-ReLU) uses an *unsigned* symmetric grid
  ``s * [0, 2^b - 1]``, which is exactly ``uniform_asymmetric`` with zero
  point 0 (its range is widened to contain 0, so ``lo = 0`` and ``z = 0``);
  signed activations fall back to the signed symmetric grid;
* ``symmetric_pow2``: ``uniform_symmetric`` with the scale rounded up to a
  power of two (``pow2_scale``), weights and activations.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.config import ConfigError, read_structured_file
from bitsmith.policy import (
    FLOAT,
    OBSERVERS,
    ROUNDING_METHODS,
    LayerSpec,
    Policy,
    PolicyError,
    QSpec,
    Rounding,
)
from bitsmith.tune.errors import SpaceError, check_keys

FLOAT_CHOICE = "float"
SCHEMES = ("asymmetric", "symmetric", "symmetric_uint8", "symmetric_pow2")
FLOAT_LAYER_SETS = {"none": (), "first": ("first",), "last": ("last",),
                    "first_last": ("first", "last")}
GLOBAL_DIMS = ("scheme", "act_clip", "weight_clip", "granularity", "calib_size",
               "float_layers", "bias_correction", "reduced_range", "rounding")
W_PREFIX, A_PREFIX = "w:", "a:"
Choices = dict[str, Any]  # one configuration of the space: parameter name -> chosen value


def _tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, int, float)) or value is None:
        value = [value]
    if not isinstance(value, Sequence):
        raise SpaceError(f"{name}: expected a list of choices, got {value!r}")
    out = tuple(value)
    if not out:
        raise SpaceError(f"{name}: the list of choices is empty; the search space would be empty")
    if len(set(map(repr, out))) != len(out):
        raise SpaceError(f"{name}: duplicate choices in {list(out)}")
    return out


def _check_bits(choices: tuple, name: str) -> None:
    for b in choices:
        if b == FLOAT_CHOICE:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16:
            raise SpaceError(f"{name}: bit width {b!r} is invalid; use integers 2..16 or "
                             f"{FLOAT_CHOICE!r}")


@dataclass(frozen=True)
class TuneSpace:
    """Every knob of post-training quantization the tuner may turn (see the module docstring).

    Attributes are tuples of choices; a single choice fixes that knob.
    ``per_layer_weight_bits`` / ``per_layer_act_bits`` turn the global
    ``weight_bits`` / ``act_bits`` into one parameter per layer (``w:<name>``,
    ``a:<name>``), i.e. a mixed-precision policy. ``percentile`` is the
    percent of ``|x|`` mass kept by the percentile observer.
    ``bias_correction`` and ``reduced_range`` are boolean knobs (default: off only).
    ``rounding`` chooses among rounding methods (default ``nearest`` only);
    ``rounding_iterations`` is the reconstruction's steps per unit for the learned ones.
    """

    scheme: tuple[str, ...] = SCHEMES
    act_clip: tuple[str, ...] = ("minmax", "entropy", "percentile", "mse")
    weight_clip: tuple[str, ...] = ("minmax",)
    granularity: tuple[str, ...] = ("tensor", "channel")
    calib_size: tuple[int, ...] = (1, 1000, 4000)
    float_layers: tuple[str, ...] = ("none", "first", "first_last")
    weight_bits: tuple[int | str, ...] = (8,)
    act_bits: tuple[int | str, ...] = (8,)
    bias_correction: tuple[bool, ...] = (False,)
    reduced_range: tuple[bool, ...] = (False,)
    rounding: tuple[str, ...] = ("nearest",)
    rounding_iterations: int = 1000
    per_layer_weight_bits: bool = False
    per_layer_act_bits: bool = False
    percentile: float = 99.99
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("scheme", "act_clip", "weight_clip", "granularity", "calib_size",
                     "float_layers", "weight_bits", "act_bits", "bias_correction",
                     "reduced_range", "rounding"):
            object.__setattr__(self, name, _tuple(getattr(self, name), name))
        bad = [r for r in self.rounding if r not in ROUNDING_METHODS]
        if bad:
            raise SpaceError(f"rounding: unknown choice(s) {bad}; use {list(ROUNDING_METHODS)}")
        it = self.rounding_iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise SpaceError(f"rounding_iterations must be a positive integer, got {it!r}")
        for name in ("bias_correction", "reduced_range"):
            bad = [v for v in getattr(self, name) if not isinstance(v, bool)]
            if bad:
                raise SpaceError(f"{name}: choices must be true/false, got {bad}")
        bad = [s for s in self.scheme if s not in SCHEMES]
        if bad:
            raise SpaceError(f"scheme: unknown choice(s) {bad}; use {list(SCHEMES)}")
        for name in ("act_clip", "weight_clip"):
            bad = [c for c in getattr(self, name) if c not in OBSERVERS]
            if bad:
                raise SpaceError(f"{name}: unknown observer(s) {bad}; use {list(OBSERVERS)}")
        bad = [g for g in self.granularity if g not in ("tensor", "channel")]
        if bad:
            raise SpaceError(f"granularity: unknown choice(s) {bad}; use tensor/channel")
        for n in self.calib_size:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise SpaceError(f"calib_size: {n!r} is not a positive number of images")
        bad = [f for f in self.float_layers if not isinstance(f, str) or f not in FLOAT_LAYER_SETS]
        if bad:
            raise SpaceError(f"float_layers: unknown choice(s) {bad}; use {list(FLOAT_LAYER_SETS)}")
        _check_bits(self.weight_bits, "weight_bits")
        _check_bits(self.act_bits, "act_bits")
        for name in ("per_layer_weight_bits", "per_layer_act_bits"):
            if not isinstance(getattr(self, name), bool):
                raise SpaceError(f"{name} must be true or false (unquoted), got "
                                 f"{getattr(self, name)!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise SpaceError(f"percentile must be a number in (0, 100], got {self.percentile!r}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise SpaceError(f"percentile={self.percentile} must be in (0, 100]")
        if self.extra:
            raise SpaceError(f"unknown search-space key(s) {sorted(self.extra)}; known: "
                             f"{[f.name for f in dataclasses.fields(self) if f.name != 'extra']}")

    # ----------------------------------------------------------- presets / IO
    @classmethod
    def quantune(cls) -> TuneSpace:
        """Quantune's space: 4 schemes x {max, KL} x 2 granularities x 3 calibration sizes x
        {int8, int8 with first+last layers in float} (96 configurations, int8 only)."""
        return cls(act_clip=("minmax", "entropy"), float_layers=("none", "first_last"))

    @classmethod
    def mixed_precision(cls, weight_bits: Sequence[int | str] = (2, 3, 4, 5, 6, 8, FLOAT_CHOICE),
                        act_bits: Sequence[int | str] = (8,), per_layer_act: bool = False
                        ) -> TuneSpace:
        """Per-layer weight bit widths (a mixed-precision policy) plus clipping and calibration.

        Defaults: symmetric per-channel weights with min/max or MSE clipping, activations
        (asymmetric) with any observer, 1,000 calibration images.
        """
        return cls(scheme=("symmetric_uint8",), act_clip=("minmax", "percentile", "mse"),
                   weight_clip=("minmax", "mse"), granularity=("channel",),
                   calib_size=(1000,), float_layers=("none",), weight_bits=tuple(weight_bits),
                   act_bits=tuple(act_bits), per_layer_weight_bits=True,
                   per_layer_act_bits=per_layer_act)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "search space") -> TuneSpace:
        """Build from a mapping (e.g. parsed YAML); ``preset: quantune|mixed`` starts from one.

        Unknown keys are an error naming the closest valid key; booleans must be booleans
        and numbers numbers (see :meth:`__post_init__`).
        """
        if not isinstance(data, Mapping):
            raise SpaceError(f"{where}: a search space must be a mapping of knob -> choices, "
                             f"got {type(data).__name__}")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        preset = data.pop("preset", None)
        presets = {"quantune": cls.quantune, "mixed": cls.mixed_precision}
        if preset is not None and (not isinstance(preset, str) or preset not in presets):
            raise SpaceError(f"{where}: unknown preset {preset!r}; use 'quantune' or 'mixed'")
        known = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        check_keys(data, [*known, "preset"], where, SpaceError)
        start = presets[preset]() if preset is not None else cls()
        try:
            return dataclasses.replace(start, **data)
        except SpaceError as err:
            raise SpaceError(f"{where}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> TuneSpace:
        """Load from a YAML or JSON file (safe loader; unreadable files are a SpaceError)."""
        try:
            data = read_structured_file(path, "search-space file")
        except ConfigError as err:
            raise SpaceError(str(err)) from None
        return cls.from_dict(data or {}, f"search-space file {path}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def fingerprint(self) -> str:
        """Canonical JSON of the space (stored with a study to refuse a mismatched resume).

        The rounding knobs are left out at their defaults, so studies started before they
        existed still resume."""
        data = self.to_dict()
        if data["rounding"] == ["nearest"] and data["rounding_iterations"] == 1000:
            del data["rounding"], data["rounding_iterations"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    # ------------------------------------------------------------ dimensions
    def dimensions(self, layer_names: Sequence[str]) -> dict[str, tuple]:
        """Parameter name -> choices, for a model with these quantizable layers (in order)."""
        dims: dict[str, tuple] = {name: getattr(self, name) for name in GLOBAL_DIMS}
        if self.per_layer_weight_bits:
            dims.update({W_PREFIX + n: self.weight_bits for n in layer_names})
        else:
            dims["weight_bits"] = self.weight_bits
        if self.per_layer_act_bits:
            dims.update({A_PREFIX + n: self.act_bits for n in layer_names})
        else:
            dims["act_bits"] = self.act_bits
        return dims

    def size(self, layer_names: Sequence[str]) -> int:
        """Number of distinct configurations."""
        return math.prod(len(c) for c in self.dimensions(layer_names).values())

    def grid(self, layer_names: Sequence[str], limit: int = 100_000) -> Iterator[Choices]:
        """Every configuration (raises :class:`SpaceError` if there are more than ``limit``)."""
        dims = self.dimensions(layer_names)
        total = self.size(layer_names)
        if total > limit:
            raise SpaceError(f"the space has {total:.3g} configurations, too many to enumerate "
                             f"(limit {limit}); use a sampling strategy instead of grid")
        names = list(dims)
        for combo in itertools.product(*dims.values()):
            yield dict(zip(names, combo))

    # -------------------------------------------------------------- policies
    def to_policy(self, config: Mapping[str, Any], layer_names: Sequence[str],
                  signed_inputs: Mapping[str, bool] | None = None) -> Policy:
        """The Policy of one configuration.

        Args:
            config: parameter name -> choice (missing global knobs take the first choice).
            layer_names: the model's quantizable layers in execution order.
            signed_inputs: layer name -> whether its calibration input has negative
                values; used by ``symmetric_uint8`` (unknown layers count as signed).
        """
        if not layer_names:
            raise SpaceError("the model has no quantizable layers")
        dims = self.dimensions(layer_names)
        get = {name: config.get(name, choices[0]) for name, choices in dims.items()}
        for name, value in get.items():
            if value not in dims[name]:
                raise SpaceError(f"{name}={value!r} is not one of the space's choices "
                                 f"{list(dims[name])}")
        edges = {"first": layer_names[0], "last": layer_names[-1]}
        float_set = {edges[e] for e in FLOAT_LAYER_SETS[get["float_layers"]]}
        signed = signed_inputs or {}
        layers: dict[str, LayerSpec] = {}
        for name in layer_names:
            wbits = get[W_PREFIX + name] if self.per_layer_weight_bits else get["weight_bits"]
            abits = get[A_PREFIX + name] if self.per_layer_act_bits else get["act_bits"]
            if name in float_set or (wbits == FLOAT_CHOICE and abits == FLOAT_CHOICE):
                layers[name] = FLOAT
                continue
            try:
                layers[name] = _layer_spec(
                    get["scheme"], get["granularity"], get["weight_clip"], get["act_clip"],
                    wbits, abits, signed.get(name, True), float(self.percentile),
                    bool(get["reduced_range"]))
            except PolicyError as err:
                raise SpaceError(f"{name}: configuration {dict(get)} is invalid: {err}") from None
        method = get["rounding"]
        rounding = (Rounding(method, iterations=self.rounding_iterations)
                    if method != "nearest" else "nearest")
        try:
            return Policy(layers, bias_correction=bool(get["bias_correction"]),
                          calib_size=int(get["calib_size"]), rounding=rounding)
        except PolicyError as err:
            raise SpaceError(f"configuration {dict(get)} is invalid: {err}") from None

    def config_from_policy(self, policy: Policy, layer_names: Sequence[str]) -> Choices:
        """The per-layer bit widths of ``policy`` as a (partial) configuration of this space.

        The warm-start hook for external allocators (e.g. a sensitivity-based integer
        program): only bit widths that are choices of the space are kept; other knobs
        are left for the sampler. Returns ``{}`` when nothing maps.
        """
        out: Choices = {}
        for name in layer_names:
            spec = policy.get(name)
            w = FLOAT_CHOICE if spec is None or spec.weight is None else spec.weight.bits
            a = FLOAT_CHOICE if spec is None or spec.act is None else spec.act.bits
            if self.per_layer_weight_bits and w in self.weight_bits:
                out[W_PREFIX + name] = w
            if self.per_layer_act_bits and a in self.act_bits:
                out[A_PREFIX + name] = a
        return out


@functools.lru_cache(maxsize=4096)
def _layer_spec(scheme: str, granularity: str, weight_clip: str, act_clip: str,
                wbits: int | str, abits: int | str, signed: bool, percentile: float,
                reduced_range: bool = False) -> LayerSpec:
    """One layer's LayerSpec (memoised: validation runs once per distinct spec)."""
    pow2 = scheme == "symmetric_pow2"
    weight = None if wbits == FLOAT_CHOICE else QSpec(
        "uniform_asymmetric" if scheme == "asymmetric" else "uniform_symmetric", int(wbits),
        granularity, observer=weight_clip, percentile=percentile, pow2_scale=pow2,
        reduced_range=reduced_range)
    unsigned = scheme == "asymmetric" or (scheme == "symmetric_uint8" and not signed)
    act = None if abits == FLOAT_CHOICE else QSpec(
        "uniform_asymmetric" if unsigned else "uniform_symmetric", int(abits), "tensor",
        observer=act_clip, percentile=percentile, pow2_scale=pow2)
    return LayerSpec(weight=weight, act=act)


def config_key(config: Mapping[str, Any]) -> str:
    """Canonical string of a configuration (cache key; equal configs give equal keys)."""
    return json.dumps({k: config[k] for k in sorted(config)}, separators=(",", ":"))
