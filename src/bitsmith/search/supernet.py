"""The weight-sharing supernet of the differentiable search (AutoQNN QSS/QPL, SSPS).

:func:`build_supernet` converts a model (``bitsmith.prepare``: trace, fold BN, LayerTable),
then swaps every *searched* layer's class to a ``Search<Conv2d|Linear|...>`` twin in place.
Such a layer keeps its one float weight and holds

* ``K_w`` weight quantizers, one per weight candidate ``(scheme, bits)``
  (:class:`~bitsmith.graph.quantizer.Quantizer`, LSQ-learnable step for the uniform family);
* ``K_a`` input-activation quantizers, one per activation bit width (``uniform_asymmetric``).

Its forward asks the search method for *terms*: lists of ``(candidate index, coefficient)``
with scalar tensor coefficients (``method.terms(layer_index, "w" | "a")``). With weight
terms ``(k, p_k)`` and activation terms ``(j, q_j)`` the layer computes, by ``path``:

``"expected"``  (composite, EdMIPS-style; what QSS/QPL use)
    ``y = op(Σ_j q_j Q^a_j(x), Σ_k p_k Q^w_k(W))`` - one convolution per layer;
``"single"``  (SSPS)
    the method returns one term per tensor (a sampled or fixed candidate with a
    straight-through coefficient equal to 1), so only one quantized weight and activation
    exist: memory stays close to one model;
``"multipath"``  (reference DNAS supernet, for comparison only)
    ``y = Σ_j Σ_k q_j p_k op(Q^a_j(x), Q^w_k(W))`` - ``K_w·K_a`` convolutions.

Costs: for every searched layer and budget kind, a ``(K_w, K_a)`` matrix ``C`` with
``C[k, j]`` = the cost (``bitsmith.cost.layer_cost``) of the layer at weight candidate ``k``
and activation candidate ``j``; the expected total is ``const + Σ_l p_lᵀ C_l q_l``, the exact
cost of the derived Policy when ``p``, ``q`` are one-hot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from bitsmith.config import Config
from bitsmith.cost import layer_cost
from bitsmith.cost.budget import Budget, InfeasibleBudgetError, latency_function
from bitsmith.errors import InputError
from bitsmith.graph.convert import ConversionError, convert
from bitsmith.graph.layer_table import QUANTIZABLE_TYPES, LayerTable
from bitsmith.graph.qmodules import LayerMixinBase, layer_op, twin_class
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import FIRST_LAST_CHOICES, FLOAT, INT8, LayerSpec, PolicyError, QSpec
from bitsmith.schemes import available, get_scheme

COST_KINDS = ("size_bytes", "bitops", "avg_weight_bits", "latency")
PATHS = ("expected", "single", "multipath")


class SupernetSpaceError(InputError):
    """The candidate set is empty or invalid; the message names the bad candidate."""


@dataclass(frozen=True)
class SupernetSpace(Config):
    """Candidates of every searched layer.

    Attributes:
        weight: weight candidates as ``(scheme, bits)`` pairs, e.g.
            ``(("uniform_symmetric", 2), ("uniform_symmetric", 4), ("pot", 4))``.
        act_bits: input-activation bit widths, quantized with ``act_scheme``.
        act_scheme: scheme of activation candidates (an integer-grid scheme).
        weight_granularity: ``"channel"`` or ``"tensor"`` (schemes without a per-channel
            form fall back to ``"tensor"``).
        observer: calibration observer of the initial ranges (``"mse"``, ``"minmax"``...).
        first_last: the one first/last vocabulary of bitsmith (:data:`FIRST_LAST_CHOICES`):
            ``"int8"`` keeps the first and last quantizable layer at W8A8 and ``"float"`` in
            float32 (fixed, counted in every budget), ``"same"`` searches them like the rest.
    """

    weight: tuple[tuple[str, int], ...] = (("uniform_symmetric", 2), ("uniform_symmetric", 3),
                                           ("uniform_symmetric", 4), ("uniform_symmetric", 5),
                                           ("uniform_symmetric", 6), ("uniform_symmetric", 8))
    act_bits: tuple[int, ...] = (4,)
    act_scheme: str = "uniform_asymmetric"
    weight_granularity: str = "channel"
    observer: str = "mse"
    first_last: str = "int8"

    def weight_specs(self) -> list[QSpec]:
        """Validated weight QSpecs (LSQ-learnable where the scheme has learnable keys)."""
        if not self.weight:
            raise SupernetSpaceError("the weight candidate set is empty; give at least one "
                                   "(scheme, bits) pair")
        out: list[QSpec] = []
        for cand in self.weight:
            if not (isinstance(cand, (tuple, list)) and len(cand) == 2):
                raise SupernetSpaceError(f"weight candidate {cand!r} must be a (scheme, bits) pair")
            scheme, bits = cand
            if scheme not in available():
                raise SupernetSpaceError(f"weight candidate {cand!r}: unknown scheme {scheme!r}; "
                                       f"known: {available()}")
            sch = get_scheme(scheme)
            gran = self.weight_granularity if sch.per_channel else "tensor"
            try:
                spec = QSpec(scheme, int(bits), gran, observer=self.observer,
                             learnable=bool(sch.learnable_keys()))
            except PolicyError as err:
                raise SupernetSpaceError(f"weight candidate {cand!r}: {err}") from None
            out.append(spec)
        if len(set(out)) != len(out):
            raise SupernetSpaceError(f"the weight candidate set {self.weight} has duplicates")
        return out

    def act_specs(self) -> list[QSpec]:
        """Validated activation QSpecs (per tensor, LSQ-learnable)."""
        if not self.act_bits:
            raise SupernetSpaceError("the activation candidate set is empty; give at least one "
                                   "bit width")
        sch = self.act_scheme
        if sch not in available() or not get_scheme(sch).integer_grid:
            raise SupernetSpaceError(f"act_scheme {sch!r} must be a registered integer-grid "
                                   "scheme (uniform_asymmetric or uniform_symmetric)")
        out = []
        for b in self.act_bits:
            try:
                out.append(QSpec(sch, int(b), "tensor", observer=self.observer,
                                 learnable=True))
            except PolicyError as err:
                raise SupernetSpaceError(f"activation candidate bits={b!r}: {err}") from None
        if len(set(out)) != len(out):
            raise SupernetSpaceError(f"the activation candidate set {self.act_bits} has "
                                   "duplicates")
        return out

    @classmethod
    def uniform_bits(cls, bits: Iterable[int], act_bits: Iterable[int] = (4,),
                     scheme: str = "uniform_symmetric", **kw: Any) -> SupernetSpace:
        """Bit-width search with one weight scheme."""
        return cls(weight=tuple((scheme, int(b)) for b in bits),
                   act_bits=tuple(int(b) for b in act_bits), **kw)


class TermSource(Protocol):
    """What a searched layer asks for its mixture: ``[(candidate index, coefficient), ...]``."""

    def terms(self, layer: int, kind: str, training: bool) -> list[tuple[int, Tensor]]: ...


class SearchLayerMixin(LayerMixinBase):
    """Forward of a searched layer (see the module docstring); also its static type (an
    ``nn.Module`` with a ``weight`` and the fields below, attached by :func:`build_supernet`)."""

    weight: Tensor
    weight_quantizers: nn.ModuleList
    act_quantizers: nn.ModuleList
    search_index: int
    search_source: TermSource | None
    search_path: str
    search_bypass: bool

    def candidates(self, kind: str) -> list[Quantizer]:
        """The weight (``"w"``) or activation (``"a"``) candidate quantizers, in order."""
        return cast(list[Quantizer],
                    list(self.weight_quantizers if kind == "w" else self.act_quantizers))

    def _op(self, x: Tensor, w: Tensor, output_size: list[int] | None) -> Tensor:
        return layer_op(self, x, w, output_size)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        acts, weights = self.candidates("a"), self.candidates("w")
        if self.search_bypass or self.search_source is None:
            for quantizer in acts:  # records statistics while calibrating
                if quantizer.calibrating:
                    quantizer(x)
            return self._op(x, self.weight, output_size)
        wt = self.search_source.terms(self.search_index, "w", self.training)
        at = self.search_source.terms(self.search_index, "a", self.training)
        if self.search_path == "multipath":
            xs = [(q, acts[j](x)) for j, q in at]
            ws = [(p, weights[k](self.weight)) for k, p in wt]
            out: Tensor | None = None
            for q, xq in xs:
                for p, wq in ws:
                    y = (p * q) * self._op(xq, wq, output_size)
                    out = y if out is None else out + y
            assert out is not None
            return out
        xq = _mix([(q, acts[j]) for j, q in at], x)
        wq = _mix([(p, weights[k]) for k, p in wt], self.weight)
        return self._op(xq, wq, output_size)


def _mix(terms: Sequence[tuple[Tensor, Quantizer]], t: Tensor) -> Tensor:
    out = None
    for c, q in terms:
        y = c * q(t)
        out = y if out is None else out + y
    if out is None:
        raise RuntimeError("a searched layer received no candidate terms")
    return out


@dataclass
class Supernet:
    """A converted model with searched layers, their candidates and cost matrices.

    Attributes:
        model: the (BN-folded, traced) float model whose searched layers were swapped.
        table: its LayerTable.
        space: the :class:`SupernetSpace`.
        names: searched layers in execution order (``search_index`` = position here).
        fixed: layers kept at a fixed spec (e.g. first/last at W8A8).
        weight_specs, act_specs: the candidate QSpecs (same for every searched layer).
        costs: ``kind -> [(K_w, K_a) tensor per searched layer]``.
        const: ``kind -> constant part`` (fixed layers, parameters outside quantizable layers).
        act_bytes: ``[(K_a,) tensor per searched layer]`` input bytes per example.
        fixed_act_bytes: largest input bytes of the fixed layers.
    """

    model: nn.Module
    table: LayerTable
    space: SupernetSpace
    names: list[str]
    fixed: dict[str, LayerSpec]
    weight_specs: list[QSpec]
    act_specs: list[QSpec]
    costs: dict[str, list[Tensor]] = field(default_factory=dict)
    const: dict[str, float] = field(default_factory=dict)
    act_bytes: list[Tensor] = field(default_factory=list)
    fixed_act_bytes: float = 0.0

    def layers(self) -> list[SearchLayerMixin]:
        return [cast(SearchLayerMixin, self.model.get_submodule(n)) for n in self.names]

    def set_source(self, source: TermSource | None) -> None:
        """Let ``source`` (a search method) decide every layer's mixture."""
        for m in self.layers():
            m.search_source = source

    def set_path(self, path: str) -> None:
        if path not in PATHS:
            raise ValueError(f"path={path!r}; use one of {PATHS}")
        for m in self.layers():
            m.search_path = path

    def spec_of(self, k: int, j: int) -> LayerSpec:
        """The LayerSpec of weight candidate ``k`` with activation candidate ``j``."""
        return LayerSpec(weight=self.weight_specs[k], act=self.act_specs[j])

    def expected_cost(self, kind: str, probs_w: Sequence[Tensor], probs_a: Sequence[Tensor]
                      ) -> Tensor:
        """``const + Σ_l p_lᵀ C_l q_l`` (scalar tensor) for one budget kind."""
        if kind not in self.costs:
            raise KeyError(f"no cost table for {kind!r} (a latency budget needs a latency LUT)")
        total = torch.zeros((), device=probs_w[0].device)
        for c, p, q in zip(self.costs[kind], probs_w, probs_a):
            total = total + p @ c.to(p.device) @ q
        return total + self.const[kind]

    def expected_peak_act(self, probs_a: Sequence[Tensor]) -> Tensor:
        """Largest expected input-activation bytes over layers (per example)."""
        vals = [q @ a.to(q.device) for a, q in zip(self.act_bytes, probs_a)]
        peak = torch.stack(vals).max()
        return torch.clamp(peak, min=self.fixed_act_bytes)

    def param_groups(self, lr_scale_quant: float = 1.0) -> list[nn.Parameter]:
        """Quantizer parameters (LSQ steps) of the searched layers."""
        out = []
        for m in self.layers():
            out += list(m.weight_quantizers.parameters()) + list(m.act_quantizers.parameters())
        return out


def _latency_matrix(lat: Any, name: str, specs: list[list[LayerSpec]]) -> Tensor:
    """``[weight cand, act cand]`` latencies of layer ``name``; ``lat`` from
    :func:`latency_function`."""
    return torch.tensor([[float(lat(name, spec)) for spec in row] for row in specs],
                        dtype=torch.float64)


def build_supernet(model: nn.Module, example_inputs: Tensor, space: SupernetSpace,
                   calibration: Iterable | None = None, *, fold_bn: bool = True,
                   latency: Any = None, calib_batches: int = 4) -> Supernet:
    """Convert ``model`` and make every searched layer a supernet layer.

    Args:
        model: any model ``bitsmith.prepare`` handles (not modified; a copy is used).
        example_inputs: one input batch ``(N, ...)`` for tracing and the LayerTable.
        space: the candidates.
        calibration: ``(inputs, labels)`` batches for the initial activation ranges
            (``None`` = use ``example_inputs`` only).
        fold_bn: fold BatchNorm before the search (train/eval identical, deploy-exact).
        latency: a :class:`bitsmith.export.latency.LatencyTable` or
            ``f(layer, LayerSpec) -> ms``; enables the ``"latency"`` cost.
        calib_batches: batches of ``calibration`` used.

    Raises:
        SupernetSpaceError: empty or invalid candidates.
        ConversionError: the model has no quantizable layer (or none left to search).
    """
    wspecs, aspecs = space.weight_specs(), space.act_specs()
    if space.first_last not in FIRST_LAST_CHOICES:
        raise SupernetSpaceError(f"first_last={space.first_last!r} is unknown; use one of "
                                 f"{', '.join(FIRST_LAST_CHOICES)}")
    work, table, _ = convert(model, example_inputs, fold_bn=fold_bn)
    names = table.names
    fixed: dict[str, LayerSpec] = {}
    if space.first_last != "same" and len(names) > 2:
        edge = INT8 if space.first_last == "int8" else FLOAT
        fixed = {names[0]: edge, names[-1]: edge}
    searched = [n for n in names if n not in fixed]
    if not searched:
        raise ConversionError(f"{type(model).__name__}: no layer left to search "
                              f"(all {len(names)} quantizable layers are fixed)")
    net = Supernet(work, table, space, searched, fixed, wspecs, aspecs)
    for i, name in enumerate(searched):
        info = table[name]
        m = work.get_submodule(name)
        if not isinstance(m, QUANTIZABLE_TYPES):
            raise ConversionError(f"{name}: {type(m).__name__} is not a quantizable layer")
        m.__class__ = twin_class(SearchLayerMixin, type(m), "Search")
        m = cast(SearchLayerMixin, m)
        m.weight_quantizers = nn.ModuleList(
            Quantizer(s, "weight", info.weight_channel_axis, f"{name}.weight[{s.short()}]")
            for s in wspecs)
        m.act_quantizers = nn.ModuleList(
            Quantizer(s, "act", info.act_channel_axis, f"{name}.input[{s.short()}]")
            for s in aspecs)
        m.search_index, m.search_source, m.search_path, m.search_bypass = i, None, "expected", False
    _compute_costs(net, latency)
    _init_quantizers(net, example_inputs, calibration, calib_batches)
    return net


def _compute_costs(net: Supernet, latency: Any) -> None:
    lat = latency_function(latency)
    table = net.table
    in_layers = sum(i.weight_params + i.bias_params for i in table)
    n_total = max(sum(i.weight_params for i in table), 1)
    const = {"size_bytes": 4.0 * (table.total_params - in_layers), "bitops": 0.0,
             "avg_weight_bits": 0.0, "latency": 0.0}
    for name, spec in net.fixed.items():
        c = layer_cost(table[name], spec)
        const["size_bytes"] += c.total_bytes
        const["bitops"] += c.bitops
        const["avg_weight_bits"] += c.weight_bits * table[name].weight_params / n_total
        net.fixed_act_bytes = max(net.fixed_act_bytes, c.activation_bytes)
        if lat is not None:
            const["latency"] += float(lat(name, spec))
    costs: dict[str, list[Tensor]] = {k: [] for k in COST_KINDS}
    kw, ka = len(net.weight_specs), len(net.act_specs)
    for name in net.names:
        info = table[name]
        specs = [[net.spec_of(k, j) for j in range(ka)] for k in range(kw)]
        lc = [[layer_cost(info, s) for s in row] for row in specs]
        costs["size_bytes"].append(torch.tensor([[c.total_bytes for c in r] for r in lc],
                                                dtype=torch.float64))
        costs["bitops"].append(torch.tensor([[c.bitops for c in r] for r in lc],
                                            dtype=torch.float64))
        costs["avg_weight_bits"].append(torch.tensor(
            [[c.weight_bits * info.weight_params / n_total for c in r] for r in lc],
            dtype=torch.float64))
        net.act_bytes.append(torch.tensor([lc[0][j].activation_bytes for j in range(ka)],
                                          dtype=torch.float64))
        if latency is not None:
            costs["latency"].append(_latency_matrix(lat, name, specs))
    if latency is None:
        del costs["latency"]
        del const["latency"]
    # float32 for the loss, float64 kept for exact checks.
    net.costs = {k: [c.float() for c in v] for k, v in costs.items()}
    net.act_bytes = [a.float() for a in net.act_bytes]
    net.const = const


@torch.no_grad()
def _init_quantizers(net: Supernet, example: Tensor, calibration: Iterable | None,
                     calib_batches: int) -> None:
    """Calibrate every activation candidate on float activations and fit every weight one."""
    model = net.model
    layers = net.layers()
    was = model.training
    model.eval()
    for m in layers:
        m.search_bypass = True
        for q in m.candidates("a"):
            q.start_calibration()
    batches: list[Tensor] = []
    if calibration is not None:
        for i, b in enumerate(calibration):
            if i >= calib_batches:
                break
            batches.append(b[0] if isinstance(b, (tuple, list)) else b)
    if not batches:
        batches = [example]
    dev = next(model.parameters()).device
    try:
        for x in batches:
            model(x.to(dev))
    finally:
        for m in layers:
            m.search_bypass = False
            for q in m.candidates("a"):
                q.calibrating = False
    for m in layers:
        for q in m.candidates("a"):
            q.finish_calibration()
        for q in m.candidates("w"):
            q(m.weight)  # fits range-based parameters (and creates LSQ parameters)
    model.train(was)


def spec_label(spec: LayerSpec) -> str:
    """Short label of a layer's choice, e.g. ``uniform_symmetric:3/ch / a4``."""
    return (f"{spec.weight.short() if spec.weight else 'float'} / "
            f"a{spec.act.bits if spec.act else 32}")


def layer_spec_table(net: Supernet, choices: Mapping[str, tuple[int, int]]) -> dict[str, LayerSpec]:
    """``layer -> LayerSpec`` for ``choices`` (``layer -> (weight idx, act idx)``) + fixed."""
    out = {}
    for name in net.table.names:
        if name in net.fixed:
            out[name] = net.fixed[name]
        elif name in choices:
            k, j = choices[name]
            out[name] = net.spec_of(k, j)
    return out


def check_budget_feasible(net: Supernet, budget: Budget) -> None:
    """Raise :class:`InfeasibleBudgetError` naming the minimum if a budget is below it."""
    for kind, limit in budget.items():
        if kind not in net.costs:
            raise ValueError(f"a {kind} budget needs a latency table (latency=...)")
        lowest = net.const[kind] + sum(float(c.double().min()) for c in net.costs[kind])
        if lowest > limit * (1 + 1e-12):
            raise InfeasibleBudgetError(kind, limit, lowest)

