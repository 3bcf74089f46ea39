"""The optimisation of one unit (a layer or a block): learned rounding, LSQ steps, QDrop.

Given the unit's sub-module on the quantized model, its inputs and the float model's
outputs on all calibration samples, :func:`optimise_unit` minimises ::

    L = Σ_outputs mean_{n, positions} Σ_c w · (f_q(x)[n, c, ...] − f(x)[n, c, ...])²
        + λ · Σ_weights (1 − |2 h(V) − 1|^β)

with Adam over the rounding variables ``V`` of every layer the unit learns (and, with
``learn_act``, the step sizes of their input quantizers), on random mini-batches.
``w`` is 1, or BRECQ's Fisher weight ``(|g| + 1)²``. With ``qdrop``, each element of
every activation quantizer's output inside the unit, and of the unit input, is replaced
by its float counterpart with probability ``drop_prob`` at every step.

The unit's state is left as it was (original weight quantizers, calibrated ranges): the
result is returned as integer codes and parameters, and :func:`apply_result` installs
them, so a result computed now and one read back from the cache install identically.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from bitsmith.graph.qmodules import QuantizedLayer
from bitsmith.graph.quantizer import Quantizer, freeze
from bitsmith.policy import Rounding
from bitsmith.reconstruct.cache import UnitResult
from bitsmith.reconstruct.softround import SoftRounding, WeightGrid, annealed_beta

STEP_KEYS = ("scale", "alpha")  # the step-size parameter of the integer-grid act schemes


def channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory order when it is a 4-D batch of images (same values).

    oneDNN's convolutions with small channel counts and small batches run several times
    faster on channels-last tensors than on contiguous NCHW ones on CPU.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def reconstruction_loss(out: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Squared error summed over the channel axis (1) and averaged over everything else."""
    d = (out - target).pow(2)
    if weight is not None:
        d = d * weight
    return d.sum(1).mean() if d.dim() >= 2 else d.mean()


def _as_tuple(out: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (cast(Tensor, out),)


def _weight_rows(weights: Sequence[Tensor | None] | None, k: int, rows: slice | Tensor
                 ) -> Tensor | None:
    """Rows ``rows`` of output ``k``'s loss weight, or ``None`` when it has none."""
    w = None if weights is None else weights[k]
    return None if w is None else w[rows]


def run_chunks(fn: nn.Module, inputs: Sequence[Tensor], chunk: int) -> list[Tensor]:
    """``fn`` over all samples in chunks (no gradient); one concatenated tensor per output."""
    n = inputs[0].shape[0]
    parts: list[list[Tensor]] = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            outs = _as_tuple(fn(*[x[s:s + chunk] for x in inputs]))
            if not parts:
                parts = [[] for _ in outs]
            for acc, o in zip(parts, outs):
                acc.append(o.detach())
    return [torch.cat(p) for p in parts]


def evaluate_loss(fn: nn.Module, inputs: Sequence[Tensor], targets: Sequence[Tensor],
                  weights: Sequence[Tensor | None] | None, chunk: int) -> float:
    """The reconstruction loss on all samples (chunked, no gradient)."""
    n = inputs[0].shape[0]
    total = 0.0
    with torch.no_grad():
        for s in range(0, n, chunk):
            outs = _as_tuple(fn(*[x[s:s + chunk] for x in inputs]))
            for k, (o, t) in enumerate(zip(outs, targets)):
                w = _weight_rows(weights, k, slice(s, s + chunk))
                total += float(reconstruction_loss(o, t[s:s + chunk], w)) * o.shape[0]
    return total / n


def act_quantizers(layers: Mapping[str, QuantizedLayer]) -> dict[str, Quantizer]:
    """Input quantizers of ``layers`` that reconstruction may learn or drop (integer-grid,
    range-based)."""
    return {name: q for name, q in ((n, m.input_quantizer) for n, m in layers.items())
            if q is not None and q.scheme.range_based and q.scheme.integer_grid}


def _step_key(q: Quantizer) -> str | None:
    if q.spec.pow2_scale:
        return None  # must stay a power of two
    return next((k for k in STEP_KEYS if k in q._param_keys), None)


@contextlib.contextmanager
def learnable_steps(quantizers: Mapping[str, Quantizer]) -> Iterator[dict[str, nn.Parameter]]:
    """Make each quantizer's step size an ``nn.Parameter`` for the duration (LSQ: the
    straight-through ``round`` gives the step its learned-step-size gradient); restores the
    buffers, holding their original values, on exit."""
    params: dict[str, nn.Parameter] = {}
    saved: dict[str, tuple[Quantizer, str, Tensor]] = {}
    for name, q in quantizers.items():
        key = _step_key(q)
        if key is None:
            continue
        attr = f"p_{key}"
        value = q._buffers.pop(attr)
        assert value is not None  # a fitted step size is a tensor buffer (_step_key)
        p = nn.Parameter(value.detach().clone())
        q.register_parameter(attr, p)
        params[name] = p
        saved[name] = (q, attr, value)
    try:
        yield params
    finally:
        for q, attr, value in saved.values():
            del q._parameters[attr]
            q.register_buffer(attr, value)


@contextlib.contextmanager
def dropped(quantizers: Sequence[Quantizer], prob: float, gen: torch.Generator
            ) -> Iterator[None]:
    """QDrop: each quantizer's output element is its float input with probability ``prob``."""
    def hook(_m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        keep_float = torch.rand(out.shape, generator=gen) < prob
        return torch.where(keep_float, args[0], out)

    handles = [q.register_forward_hook(hook) for q in quantizers] if prob > 0 else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _mask_of(layer: QuantizedLayer) -> Tensor | None:
    """0/1 mask of the surviving weights of a layer the Policy marks sparse."""
    if getattr(layer, "layer_spec", None) is None or not layer.layer_spec.sparsity:
        return None
    return (layer.weight.detach() != 0).float()


def optimise_unit(fn: nn.Module, layers: Mapping[str, QuantizedLayer], inputs: Sequence[Tensor],
                  targets: Sequence[Tensor], settings: Rounding, gen: torch.Generator, *,
                  float_inputs: Sequence[Tensor] | None = None,
                  weights: Sequence[Tensor | None] | None = None, chunk: int = 256
                  ) -> UnitResult:
    """Learn the rounding of ``layers`` (and their activation steps) inside ``fn``.

    Args:
        fn: the unit on the quantized model (its layers are ``layers``' modules).
        layers: name -> quantized layer learned here (weight quantizer may be ``None``).
        inputs: the unit's inputs on all N calibration samples, ``(N, ...)`` each.
        targets: the float model's unit outputs, ``(N, ...)`` each, in ``fn``'s order.
        settings: the Policy's :class:`~bitsmith.policy.Rounding`.
        gen: the unit's random stream (mini-batches, QDrop masks).
        float_inputs: the float model's unit inputs (QDrop mixes them into ``inputs``).
        weights: optional per-output Fisher weights, shaped like ``targets``.
        chunk: samples per forward pass when evaluating on all samples.
    """
    n = inputs[0].shape[0]
    inputs = [channels_last(x) for x in inputs]
    targets = [channels_last(t) for t in targets]
    if float_inputs is not None:
        float_inputs = [channels_last(x) for x in float_inputs]
    if weights is not None:
        weights = [None if w is None else channels_last(w) for w in weights]
    before = evaluate_loss(fn, inputs, targets, weights, chunk)
    frozen_params = [p for p in fn.parameters() if p.requires_grad]
    for p in frozen_params:  # weights and biases stay fixed; only V and steps learn
        p.requires_grad_(False)
    originals: dict[str, Quantizer] = {}
    softs: dict[str, SoftRounding] = {}
    acts = act_quantizers(layers)
    drop = settings.drop_prob if settings.method == "qdrop" else 0.0
    t0 = time.perf_counter()
    try:
        for name, layer in layers.items():
            wq = layer.weight_quantizer
            if wq is None:
                continue
            softs[name] = SoftRounding(layer.weight, WeightGrid.of(wq, layer.weight),
                                       _mask_of(layer))
            originals[name] = wq
            # the soft rounding stands in for the weight quantizer (same child module slot)
            layer.register_module("weight_quantizer", softs[name])
        steps_ctx: contextlib.AbstractContextManager[dict[str, nn.Parameter]] = (
            learnable_steps(acts) if settings.learn_act else contextlib.nullcontext({}))
        with steps_ctx as steps:
            groups = [{"params": [s.v for s in softs.values()], "lr": settings.lr},
                      {"params": list(steps.values()), "lr": settings.act_lr}]
            opt = torch.optim.Adam([g for g in groups if g["params"]])
            with dropped(list(acts.values()), drop, gen):
                for it in range(settings.iterations):
                    idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
                    xs = [x[idx] for x in inputs]
                    if drop and float_inputs is not None:
                        xs = [torch.where(torch.rand(x.shape, generator=gen) < drop, f[idx], x)
                              for x, f in zip(xs, float_inputs)]
                    outs = _as_tuple(fn(*xs))
                    terms = [reconstruction_loss(o, t[idx], _weight_rows(weights, k, idx))
                             for k, (o, t) in enumerate(zip(outs, targets))]
                    loss = terms[0]
                    for term in terms[1:]:
                        loss = loss + term
                    beta = annealed_beta(it, settings.iterations, settings.warmup,
                                         settings.beta_start, settings.beta_end)
                    if beta is not None and softs and settings.reg_weight > 0:
                        loss = loss + settings.reg_weight * sum(
                            s.regularizer(beta) for s in softs.values())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for p in steps.values():
                            p.clamp_(min=1e-12)
            seconds = time.perf_counter() - t0
            for s in softs.values():
                s.harden()
            after = evaluate_loss(fn, inputs, targets, weights, chunk)
            learned: dict[str, dict[str, Tensor]] = {}
            for name, p in steps.items():
                key = _step_key(acts[name])
                assert key is not None  # learnable_steps only makes steps that have a key
                learned[name] = {key: p.detach().clone()}
        codes = {name: s.codes() for name, s in softs.items()}
    finally:  # leave the unit as it was: apply_result is the one way to install a result
        for name, wq in originals.items():
            layers[name].weight_quantizer = wq
        for p in frozen_params:
            p.requires_grad_(True)
    return UnitResult(codes, learned, before, after, settings.iterations, seconds)


def apply_result(layers: Mapping[str, QuantizedLayer], result: UnitResult) -> None:
    """Install a unit's learned codes and activation parameters into ``layers``.

    Each layer's weight becomes ``scale · (q − zero_point)`` on its quantizer's grid
    (fitted from the float weight; zeros kept for sparse layers) and its weight quantizer
    is frozen, so the simulation, the packed artifact and the ONNX export all see exactly
    these values.
    """
    for name, codes in result.codes.items():
        layer = layers[name]
        wq = layer.weight_quantizer
        assert wq is not None  # codes are only learned for layers with a weight quantizer
        grid = WeightGrid.of(wq, layer.weight)
        value = grid.value(codes.to(torch.float32))
        mask = _mask_of(layer)
        if mask is not None:
            value = torch.where(mask > 0, value, torch.zeros_like(value))
        with torch.no_grad():
            layer.weight.data = value.to(layer.weight.dtype).reshape(layer.weight.shape)
        freeze(wq)
    for name, params in result.act_params.items():
        q = layers[name].input_quantizer
        assert q is not None  # steps are only learned for layers with an input quantizer
        q._store({**q.params(), **params})
