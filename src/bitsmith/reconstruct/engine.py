"""The reconstruction driver: walk the model unit by unit, learn, cache, report.

:func:`reconstruct` takes the converted float model and its quantized twin (same
graph; activation ranges already calibrated) and the calibration inputs. It runs both
models piece by piece over all calibration samples (in chunks), keeping only the values
that later pieces still need. At each unit it takes the unit's inputs (the quantized
model's, or the float model's with ``inputs="float"``) and the float model's outputs,
learns the unit (:func:`~bitsmith.reconstruct.loop.optimise_unit`) or reads it from the
cache, installs the result, and moves on with the quantized model's now final values.

Untraced models (the module-swapping fallback) have no graph to cut: they are
reconstructed layer by layer whatever the method, with inputs and outputs captured by
hooks (one full forward pass of each model per layer); a layer called several times per
forward is learned on its first call.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from bitsmith.graph import quantized_layers
from bitsmith.graph.qmodules import QuantizedLayer
from bitsmith.policy import Rounding
from bitsmith.reconstruct.blocks import (
    Piece,
    block_groups,
    layer_groups,
    make_pieces,
    piece_module,
    trace_values,
)
from bitsmith.reconstruct.cache import (
    ReconstructionCache,
    UnitResult,
    sha256_json,
    tensors_fingerprint,
    weights_fingerprint,
)
from bitsmith.reconstruct.loop import apply_result, optimise_unit, run_chunks

log = logging.getLogger("bitsmith.reconstruct")
CHUNK = 256  # samples per forward pass over the calibration set (part of the cache key)


@dataclass
class UnitRecord:
    """One reconstructed unit, for progress lines and the report.

    ``loss_before`` / ``loss_after``: reconstruction loss with round-to-nearest and with
    the learned rounding (see :class:`~bitsmith.reconstruct.cache.UnitResult`);
    ``seconds``: wall time of its optimisation (as measured when it was computed, also
    for a cached unit); ``cached``: read from the cache instead of computed.
    """

    name: str
    layers: list[str]
    iterations: int
    loss_before: float
    loss_after: float
    seconds: float
    cached: bool

    @property
    def gain(self) -> float:
        """``loss_before / loss_after`` (how many times smaller the error became)."""
        return self.loss_before / self.loss_after if self.loss_after > 0 else float("inf")


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct` did: settings, units in order, wall time."""

    method: str
    settings: dict[str, Any]
    samples: int
    units: list[UnitRecord] = field(default_factory=list)
    seconds: float = 0.0
    traced: bool = True
    threads: int = 1

    @property
    def cached_units(self) -> int:
        return sum(u.cached for u in self.units)

    @property
    def layers(self) -> list[str]:
        """Every layer whose rounding was learned."""
        return [name for u in self.units for name in u.layers]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cached_units"] = self.cached_units
        return out

    def summary(self) -> str:
        """One line: method, units, wall time, cache hits."""
        return (f"{self.method}: {len(self.units)} units ({len(self.layers)} layers), "
                f"{self.settings['iterations']} iterations each, {self.samples} calibration "
                f"samples, {self.seconds:.1f} s wall ({self.cached_units} from cache)")


Progress = Callable[[UnitRecord, int, int], None]


def _log_progress(record: UnitRecord, index: int, total: int) -> None:
    how = "cached" if record.cached else f"{record.seconds:.1f} s"
    log.info("reconstruct %d/%d %s: loss %.4g -> %.4g (%s)", index + 1, total, record.name,
             record.loss_before, record.loss_after, how)


def unit_seed(seed: int, name: str) -> int:
    """The random stream of one unit: depends on the seed and the unit only (resumable)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def _spec_data(layers: Mapping[str, QuantizedLayer], names: Sequence[str]) -> dict[str, Any]:
    """Specs and calibrated activation parameters of ``names`` (part of a unit's key)."""
    out: dict[str, Any] = {}
    for name in names:
        m = layers[name]
        iq = m.input_quantizer
        act = tensors_fingerprint(dict(iq.params())) if iq is not None and iq.ready else None
        out[name] = {"spec": m.layer_spec.to_dict(), "act_params": act}
    return out


class _Keys:
    """Cache keys: a base (settings, data, weights) and, for quantized inputs, a chain."""

    def __init__(self, settings: Rounding, inputs: Sequence[Tensor], fp_model: nn.Module,
                 traced: bool) -> None:
        self.chained = settings.inputs == "quantized"
        self.base = sha256_json({"settings": settings.to_dict(), "traced": traced,
                                 "chunk": CHUNK, "data": tensors_fingerprint(list(inputs)),
                                 "weights": weights_fingerprint(fp_model)})
        self.chain = self.base

    def unit(self, piece: Piece, layers: Mapping[str, QuantizedLayer]) -> str:
        desc = {"name": piece.name, "nodes": piece.nodes, "layers": piece.layers,
                "specs": _spec_data(layers, [*piece.layers, *piece.others])}
        key = sha256_json({"base": self.base, "upstream": self.chain if self.chained else None,
                           "piece": desc})
        return key

    def advance(self, piece: Piece, layers: Mapping[str, QuantizedLayer], key: str | None
                ) -> None:
        """Fold a finished piece into the chain (its learned key, or its specs if passive)."""
        if self.chained:
            what = key or sha256_json({"nodes": piece.nodes,
                                       "specs": _spec_data(layers, piece.others)})
            self.chain = sha256_json([self.chain, what])


class _Keep(fx.Interpreter):
    """Runs a graph and keeps the values of the ``wanted`` nodes (with their autograd graph)."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, Tensor] = {}

    def run_node(self, node: fx.Node) -> Any:
        out = super().run_node(node)
        if node.name in self.wanted and isinstance(out, Tensor):
            self.values[node.name] = out
        return out


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _fisher_weights(qmodel: fx.GraphModule, fp_model: nn.Module, inputs: Sequence[Tensor],
                    nodes: Sequence[str]) -> dict[str, Tensor]:
    """BRECQ's Fisher weights ``(|∂KL/∂z| + 1)²`` at each named node ``z`` of ``qmodel``
    (round-to-nearest weights), with ``KL(softmax(fp) ‖ softmax(q))`` per batch."""
    grads: dict[str, list[Tensor]] = {n: [] for n in nodes}
    for s in range(0, inputs[0].shape[0], CHUNK):
        args = [x[s:s + CHUNK] for x in inputs]
        with torch.no_grad():
            target = _first(fp_model(*args))
        keep = _Keep(qmodel, set(nodes))
        with torch.enable_grad():
            logits = _first(keep.run(*args))
            loss = F.kl_div(F.log_softmax(logits, 1), F.softmax(target, 1),
                            reduction="batchmean")
            names = [k for k in nodes if k in keep.values and keep.values[k].requires_grad]
            got = torch.autograd.grad(loss, [keep.values[k] for k in names], allow_unused=True)
        for k, g in zip(names, got):
            grads[k].append(torch.zeros_like(keep.values[k]) if g is None else g.detach())
    return {k: (torch.cat(v).abs() + 1.0).pow(2) for k, v in grads.items() if v}


def reconstruct(qmodel: nn.Module, fp_model: nn.Module, inputs: Sequence[Tensor],
                settings: Rounding, *, cache: ReconstructionCache | str | Path | None = None,
                progress: Progress | None = None) -> ReconstructionReport:
    """Learn the rounding of every quantized weight of ``qmodel`` in place.

    Args:
        qmodel: the quantized model (``bitsmith.quantize`` internals: converted, policy
            applied, activation ranges calibrated).
        fp_model: the same converted float model (same graph, float weights).
        inputs: calibration inputs, one ``(N, ...)`` tensor per model argument (no labels).
        settings: method and hyper-parameters (the Policy's ``rounding``).
        cache: a :class:`ReconstructionCache` or a folder for one; finished units are read
            from it and new ones written to it.
        progress: called after each unit with ``(record, index, total)``; default: a log
            line on the ``bitsmith.reconstruct`` logger.

    Returns:
        A :class:`ReconstructionReport`; the learned weights are installed in ``qmodel``.
    """
    if not settings.learned:
        raise ValueError("reconstruct() needs a learned rounding method, not 'nearest'")
    if cache is not None and not isinstance(cache, ReconstructionCache):
        cache = ReconstructionCache(cache)
    progress = progress or _log_progress
    t0 = time.perf_counter()
    inputs = [x.detach().float() if x.is_floating_point() else x for x in inputs]
    q_graph = qmodel if isinstance(qmodel, fx.GraphModule) else None
    fp_graph = fp_model if isinstance(fp_model, fx.GraphModule) else None
    traced = q_graph is not None and fp_graph is not None
    report = ReconstructionReport(settings.method, settings.to_dict(), int(inputs[0].shape[0]),
                                  traced=traced, threads=torch.get_num_threads())
    was = (qmodel.training, fp_model.training)
    qmodel.eval()
    fp_model.eval()
    try:
        if q_graph is not None and fp_graph is not None:
            _run_graph(q_graph, fp_graph, inputs, settings, cache, progress, report)
        else:
            _run_eager(qmodel, fp_model, inputs, settings, cache, progress, report)
    finally:
        qmodel.train(was[0])
        fp_model.train(was[1])
    report.seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


def _learn(piece: Piece, fn: nn.Module, layers: Mapping[str, QuantizedLayer], keys: _Keys,
           cache: ReconstructionCache | None, settings: Rounding, unit_in: list[Tensor],
           fp_in: list[Tensor], targets: list[Tensor], weights: list[Tensor | None] | None
           ) -> tuple[UnitResult, bool, str]:
    """One unit: from the cache, or optimised (and stored); installed in ``layers``."""
    own = {n: layers[n] for n in piece.layers}
    key = keys.unit(piece, layers)
    result = cache.load(key) if cache is not None else None
    cached = result is not None
    if result is None:
        gen = torch.Generator().manual_seed(unit_seed(settings.seed, piece.name))
        result = optimise_unit(fn, own, unit_in, targets, settings, gen, float_inputs=fp_in,
                               weights=weights, chunk=CHUNK)
        if cache is not None:
            cache.store(key, result, piece.name)
    apply_result(own, result)
    return result, cached, key


def _record(piece: Piece, result: UnitResult, cached: bool) -> UnitRecord:
    return UnitRecord(piece.name, list(piece.layers), result.iterations, result.loss_before,
                      result.loss_after, result.seconds, cached)


def _run_graph(qmodel: fx.GraphModule, fp_model: fx.GraphModule, inputs: list[Tensor],
               settings: Rounding, cache: ReconstructionCache | None, progress: Progress,
               report: ReconstructionReport) -> None:
    layers = quantized_layers(qmodel)
    learnable = [n for n, m in layers.items() if m.weight_quantizer is not None]
    graph = qmodel.graph
    modules = dict(qmodel.named_modules())
    groups = (block_groups(graph, modules, learnable) if settings.blockwise
              else layer_groups(graph, modules, learnable, include_activation=True))
    batch = min(2, inputs[0].shape[0])
    example = trace_values(fp_model, [x[:batch] for x in inputs])
    pieces = make_pieces(graph, list(layers), groups, example, batch)
    units = [p for p in pieces if p.is_unit]
    placeholders = [n.name for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ValueError(f"the model takes {len(placeholders)} inputs, the calibration data "
                         f"gives {len(inputs)}")
    fisher = (_fisher_weights(qmodel, fp_model, inputs, [o for p in units for o in p.outputs])
              if settings.fisher else {})
    last_use = {}
    for i, p in enumerate(pieces):
        for name in p.inputs:
            last_use[name] = i
    q_env = dict(zip(placeholders, inputs))
    fp_env = dict(q_env)
    keys = _Keys(settings, inputs, fp_model, traced=True)
    done = 0
    for i, piece in enumerate(pieces):
        q_fn = piece_module(qmodel, graph, piece)
        fp_fn = piece_module(fp_model, graph, piece)
        fp_in = [fp_env[n] for n in piece.inputs]
        q_in = [q_env[n] for n in piece.inputs]
        fp_out = run_chunks(fp_fn, fp_in, CHUNK)
        key = None
        if piece.is_unit:
            unit_in = q_in if settings.inputs == "quantized" else fp_in
            weights = [fisher.get(o) for o in piece.outputs] if fisher else None
            result, cached, key = _learn(piece, q_fn, layers, keys, cache, settings, unit_in,
                                         fp_in, fp_out, weights)
            record = _record(piece, result, cached)
            report.units.append(record)
            progress(record, done, len(units))
            done += 1
        keys.advance(piece, layers, key)
        q_out = run_chunks(q_fn, q_in, CHUNK)
        for name, q, f in zip(piece.outputs, q_out, fp_out):
            q_env[name], fp_env[name] = q, f
        for name in [n for n, last in last_use.items() if last == i]:
            q_env.pop(name, None)
            fp_env.pop(name, None)


def _capture(model: nn.Module, layer: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    """The first-call input of ``layer`` when ``model`` runs on all samples (chunked)."""
    got: list[Tensor] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        if not seen:
            got.append(args[0].detach())
            seen.append(True)

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for s in range(0, inputs[0].shape[0], CHUNK):
                seen: list[bool] = []
                model(*[x[s:s + CHUNK] for x in inputs])
    finally:
        handle.remove()
    return [torch.cat(got)]


class _LayerCall(nn.Module):
    """A layer as a unit: calls the module itself."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _run_eager(qmodel: nn.Module, fp_model: nn.Module, inputs: list[Tensor],
               settings: Rounding, cache: ReconstructionCache | None, progress: Progress,
               report: ReconstructionReport) -> None:
    layers = quantized_layers(qmodel)
    learnable = [n for n, m in layers.items() if m.weight_quantizer is not None]
    passive = tuple(n for n in layers if n not in learnable)
    fp_layers = dict(fp_model.named_modules())
    if settings.fisher:
        warnings.warn("rounding.fisher needs a traced (torch.fx) model; this one is "
                      "reconstructed with the plain squared error", stacklevel=3)
    keys = _Keys(settings, inputs, fp_model, traced=False)
    for i, name in enumerate(learnable):
        piece = Piece(name, (name,), ("input",), ("output",), (name,), passive)
        fp_in = _capture(fp_model, fp_layers[name], inputs)
        with torch.no_grad():
            targets = run_chunks(_LayerCall(fp_layers[name]), fp_in, CHUNK)
        unit_in = (_capture(qmodel, layers[name], inputs) if settings.inputs == "quantized"
                   else fp_in)
        result, cached, key = _learn(piece, _LayerCall(layers[name]), layers, keys, cache,
                                     settings, unit_in, fp_in, targets, None)
        record = _record(piece, result, cached)
        report.units.append(record)
        progress(record, i, len(learnable))
        keys.advance(piece, layers, key)
