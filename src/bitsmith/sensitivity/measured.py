"""Measured sensitivity: quantize one layer at a time and measure the damage on data.

For every (layer, candidate) the model is quantized with a policy in which only
that layer carries the candidate (all others keep the ``base`` policy, float by
default), and evaluated on a fixed set of labelled batches (use the
*validation* split, a few batches: ~1,000 images are enough to rank layers).
Three scores come out of the same pass, all relative to the base model:

* ``measured_kl``: mean over examples of KL(p_base || p_quant) of the softmax
  outputs, in nats (needs no labels, always >= 0, lowest noise);
* ``measured_loss``: mean cross-entropy increase, nats (may be slightly < 0);
* ``measured_accuracy``: top-1 accuracy drop, percentage points.

Cost: one :func:`bitsmith.quantize` plus one evaluation per pair; the calibration
statistics are gathered once (pass :class:`~bitsmith.quantize.CalibrationStats`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.scores import Sensitivity
from bitsmith.policy import Policy
from bitsmith.progress import track
from bitsmith.quantize import CalibrationError, CalibrationStats, collect_stats, quantize
from bitsmith.schemes import get_scheme
from bitsmith.sensitivity.batches import channels_last, fixed_batches

MEASURED = ("measured_kl", "measured_loss", "measured_accuracy")


@torch.inference_mode()
def _logits(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).float() for x, _ in batches])


def output_damage(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
                  ) -> dict[str, float]:
    """The three measured scores of ``logits`` against ``ref_logits``, both ``(N, classes)``.

    Returns:
        ``measured_kl`` (nats), ``measured_loss`` (nats), ``measured_accuracy`` (points).
    """
    ref_logp = F.log_softmax(ref_logits, dim=1)
    logp = F.log_softmax(logits, dim=1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(1).mean()
    loss = F.cross_entropy(logits, labels) - F.cross_entropy(ref_logits, labels)
    acc = (ref_logits.argmax(1) == labels).float().mean() - (logits.argmax(1) == labels
                                                            ).float().mean()
    return {"measured_kl": float(kl), "measured_loss": float(loss),
            "measured_accuracy": 100.0 * float(acc)}


def _needs_calibration(space: CandidateSpace, base: Policy) -> bool:
    specs = [s for _, _, s in space.pairs()] + list(base.values())
    return any(s.act is not None and get_scheme(s.act.scheme).range_based for s in specs)


def measure_sensitivity(model: nn.Module, space: CandidateSpace, data: Iterable, *,
                        calibration: CalibrationStats | Iterable | None = None,
                        base: Policy | None = None, max_batches: int | None = None,
                        max_examples: int | None = 1000, progress: bool = False,
                        cache: str | Path | None = None) -> Sensitivity:
    """Quantize each layer alone with each candidate and measure the change of the outputs.

    Args:
        model: the float model (not modified).
        space: layers and candidates (from :func:`bit_candidates`).
        data: labelled validation batches ``(inputs (N, ...), labels (N,))``;
            materialised once (at most ``max_batches`` / ``max_examples``).
        calibration: :class:`CalibrationStats` from :func:`bitsmith.collect_stats`
            (recommended: gathered once), or a calibration loader (stats are
            gathered once here). Needed when candidates quantize activations
            with a range-based scheme.
        base: spec of every other layer (default: all float). Scores are relative
            to the model quantized with ``base``. Its model-wide choices apply to every
            candidate: with a learned ``rounding`` each layer's sensitivity is measured
            *after reconstruction* (``calibration`` must then hold the inputs:
            ``collect_stats(..., keep_inputs=True)``; use ``inputs="float"`` so that every
            layer is reconstructed independently of the others and reused from ``cache``).
        progress: show a rich progress bar with ETA.
        cache: reconstruction cache folder (learned rounding only).

    Returns:
        :class:`Sensitivity` with ``measured_kl``, ``measured_loss`` and
        ``measured_accuracy``, all sharing one ``seconds`` (the whole pass).

    Raises:
        CalibrationError: range-based activation candidates without ``calibration``.
        ValueError: empty or unlabelled ``data``.
    """
    t0 = time.perf_counter()
    base = Policy({}) if base is None else base
    if calibration is None and _needs_calibration(space, base):
        raise CalibrationError("the candidates quantize activations with a range-based scheme: "
                               "pass calibration= (bitsmith.collect_stats(model, loader))")
    batches = fixed_batches(data, max_batches, max_examples)
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = collect_stats(model, calibration)
    base.check_layers(space.table.names)
    example = batches[0][0][:1]
    labels = torch.cat([y for _, y in batches])
    fast = channels_last(batches)

    def run(policy: Policy) -> torch.Tensor:
        qmodel = quantize(model, policy, example_inputs=example, calibration=calibration,
                          cache=cache)
        return _logits(qmodel.to(memory_format=torch.channels_last), fast)

    ref = run(base)
    scores: dict[str, dict[str, list[float]]] = {m: {n: [] for n in space} for m in MEASURED}
    for name, _i, spec in track(space.pairs(), "measured sensitivity", space.size, progress):
        damage = output_damage(ref, run(base.with_layers({name: spec})), labels)
        for metric, value in damage.items():
            scores[metric][name].append(value)
    seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {"measured_examples": int(labels.numel()),
                            "measured_evaluations": space.size + 1,
                            "measured_base_policy": base.fingerprint()[:12],
                            "measured_rounding": base.rounding.short()}
    return Sensitivity(space, scores, {m: seconds for m in MEASURED}, meta)
