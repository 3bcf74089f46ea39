"""Dynamic bit widths: each layer's weight bits from its surviving-weight distribution.

Under an overall size budget ``B`` (bytes, as :func:`compression_report` counts them) the
bit width ``b_l`` of every DPQ layer ``l`` is chosen by the 0-1 integer program of
:func:`bitsmith.allocation.ilp`::

    minimise  Σ_l NSR_l(b_l)      subject to  size(b) <= B

``NSR_l(b) = ‖w_l - Q_b(w_l)‖² / ‖w_l‖²`` is the noise-to-signal ratio of DPQ-quantizing the
layer's *surviving* weights at ``b`` bits (:func:`bitsmith.compress.dpq.quantization_nsr`).
It is the distribution-driven part: a layer whose survivors are spread out, heavy-tailed
(high kurtosis) or carry outliers loses more at low bits and so receives more bits.
Pruning changes the survivors and their masks, so the allocation is re-run as pruning
advances (:class:`bitsmith.compress.callbacks.DPQCallback`).

The integer program charges a sparse layer's mask as a bitmask (it costs from
``LayerSpec.sparsity``); the actual mask may be a cheaper relative index. That difference
does not depend on the bits, so the budget handed to the solver is raised by exactly it
and the final size (with the real masks) is checked against ``B``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.ilp import allocate
from bitsmith.compress.accounting import compression_report, mask_layouts, sync_sparsity
from bitsmith.compress.dpq import dpq_spec, quantization_nsr, set_layer_spec
from bitsmith.compress.pruning import CompressError
from bitsmith.cost import weight_bytes
from bitsmith.cost.budget import Budget, InfeasibleBudgetError
from bitsmith.graph import quantized_layers
from bitsmith.policy import LayerSpec
from bitsmith.quantize import quant_info

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


def infeasible_size(budget: float, minimum: float) -> InfeasibleBudgetError:
    """The error when even the lowest bit widths exceed the size budget at this sparsity."""
    return InfeasibleBudgetError("size_bytes", budget, minimum, " at the current sparsity",
                                 hint="raise the budget (lower --ratio), prune more, or allow "
                                 "fewer bits")
WEIGHTINGS = ("equal", "sqrt", "size")



@dataclass
class BitChoice:
    """Result of :func:`allocate_bits`.

    Attributes:
        bits: ``layer -> weight bits``.
        nsr: ``layer -> NSR`` at the chosen bits.
        size_bytes: model size after the choice (cost model with actual masks).
        budget_bytes: the budget.
    """

    bits: dict[str, int]
    nsr: dict[str, float]
    size_bytes: int
    budget_bytes: float
    scores: dict[str, list[float]] = field(default_factory=dict)


def dpq_layers(qmodel: nn.Module) -> list[str]:
    """Names of layers whose weight quantizer is a DPQ one (see ``install_dpq``)."""
    from bitsmith.compress.dpq import DPQWeightQuantizer

    return [n for n, m in quantized_layers(qmodel).items()
            if isinstance(m.weight_quantizer, DPQWeightQuantizer)]


def allocate_bits(qmodel: nn.Module, budget_bytes: float, bits: Sequence[int] = DEFAULT_BITS,
                  layers: Iterable[str] | None = None, two_level: bool = True,
                  pseudo: bool = True, weighting: str = "sqrt", time_limit: float = 30.0
                  ) -> BitChoice:
    """Choose the weight bits of ``layers`` (default: the DPQ layers) under ``budget_bytes``.

    The model's sparsities are synced from its weights first; the chosen bits are applied
    in place (``qmodel.bitsmith.policy`` updated). ``weighting`` multiplies each layer's NSR
    by 1 (``"equal"``: every layer's relative output noise counts the same), ``sqrt(m_l)``
    (``"sqrt"``, the default) or ``m_l`` (``"size"``: total squared weight error), with
    ``m_l`` the layer's surviving weights.

    Raises:
        CompressError: a non-positive budget or bad bit list.
        InfeasibleBudgetError: even the lowest bits exceed the budget.
    """
    if not budget_bytes > 0:
        raise CompressError(f"budget must be a positive number of bytes, got {budget_bytes}")
    bits = sorted(set(int(b) for b in bits))
    if not bits or bits[0] < 2 or bits[-1] > 8:
        raise CompressError(f"candidate bits must lie in 2..8, got {bits}")
    if weighting not in WEIGHTINGS:
        raise CompressError(f"weighting={weighting!r} is unknown; use one of {WEIGHTINGS}")
    names = list(layers) if layers is not None else dpq_layers(qmodel)
    if not names:
        raise CompressError("no DPQ layer to allocate bits for (call install_dpq first)")
    policy = sync_sparsity(qmodel)
    info = quant_info(qmodel)
    table = info.layer_table
    qlayers = quantized_layers(qmodel)
    masks = mask_layouts(qmodel)
    choices: dict[str, list[LayerSpec]] = {}
    scores: dict[str, list[float]] = {}
    for n in names:
        spec = policy[n]
        choices[n] = [LayerSpec(dpq_spec(b, two_level), spec.act, spec.sparsity) for b in bits]
        w = qlayers[n].weight
        m = max(int((w != 0).sum()), 1)
        factor = {"equal": 1.0, "sqrt": m ** 0.5, "size": float(m)}[weighting]
        scores[n] = [factor * quantization_nsr(w, b, two_level, pseudo) for b in bits]
    # The solver charges masks as bitmasks; the real (cheaper or equal) masks save a fixed
    # number of bytes per layer, whatever the bits.
    saving = 0
    for n, mask in masks.items():
        info_n = table[n]
        b = policy[n].quantized_weight(n).bits
        saving += (weight_bytes(info_n.weight_params, b, policy[n].sparsity)
                   - weight_bytes(info_n.weight_params, b, mask=mask))
    space = CandidateSpace(table, choices)
    try:
        alloc = allocate(space, scores, Budget(size_bytes=budget_bytes + saving), base=policy,
                         time_limit=time_limit)
    except InfeasibleBudgetError as err:
        raise infeasible_size(budget_bytes, err.minimum - saving) from None
    for n in names:
        set_layer_spec(qmodel, n, alloc.policy[n], pseudo=pseudo)
    sync_sparsity(qmodel)  # a layer whose mask stopped paying off at its new bits goes dense
    size = compression_report(qmodel).size_bytes
    if size > budget_bytes:  # pragma: no cover - guards the saving argument above
        raise AssertionError(f"allocated size {size} exceeds the budget {budget_bytes}")
    chosen = {n: alloc.policy[n].quantized_weight(n).bits for n in names}
    nsr = {n: quantization_nsr(qlayers[n].weight, chosen[n], two_level, pseudo) for n in names}
    return BitChoice(bits=chosen, nsr=nsr,
                     size_bytes=size, budget_bytes=float(budget_bytes), scores=scores)
