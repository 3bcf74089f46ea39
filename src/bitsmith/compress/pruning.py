"""Magnitude pruning: masks, thresholds, the gradual (cubic) schedule, mask enforcement.

Masks are boolean tensors of a weight's shape, ``True`` = keep. They are computed on the
weights the deployed model stores (after BatchNorm folding) and kept through quantization
and fine-tuning by :func:`apply_masks` (pruned weights set to exactly ``0.0``) and
:func:`mask_gradients` (their gradients set to 0, so that no optimizer step moves them).

* **unstructured** magnitude pruning (Han et al. 2015): the ``round(s·n)`` smallest
  ``|w|`` of a layer are pruned (``scope="layer"``: every layer at sparsity ``s``), or every
  weight below one threshold over all prunable layers (``scope="global"``: the layers'
  sparsities then differ, the overall sparsity is ``s``);
* **structured** channel pruning (``structured=True``): whole output channels (filters)
  with the smallest L2 norm are pruned, ``round(s·C_out)`` per layer (or by one global
  threshold on the filter norms divided by ``sqrt`` of the filter size). The channel's
  weights are zeros in the stored model; its bias (from BN folding) stays, so the output
  of the channel is a constant, not removed; its mask is a few long runs, which the
  relative-index encoding stores cheaply;
* **gradual schedule** (Zhu & Gupta, "To prune, or not to prune", 2017):
  ``s_t = s_f + (s_i - s_f) · (1 - (t - t_0) / (t_1 - t_0))^3`` for ``t_0 <= t <= t_1``:
  prunes fast while the network is redundant and slowly near the target.

Already pruned weights stay pruned when the sparsity grows (their magnitude is 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from bitsmith.errors import InputError

SCOPES = ("layer", "global")


class CompressError(InputError):
    """Invalid compression settings (sparsity, budget, ...); the message says which."""


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in ``[0, 1)``; :class:`CompressError` otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise CompressError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise CompressError(
            f"{what}={sparsity!r} is out of range: it is the fraction of weights pruned and "
            "must be in [0, 1), e.g. 0.7 for 70% zeros (1.0 would remove every weight)")
    return value


def _n_pruned(n: int, sparsity: float) -> int:
    """Weights pruned out of ``n`` at ``sparsity``: ``round(s·n)``, at most ``n - 1``."""
    return min(int(round(n * sparsity)), n - 1)


def _prune_smallest(scores: Tensor, k: int) -> Tensor:
    """Keep mask (shape of ``scores``) with the ``k`` smallest scores pruned (ties by index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep[order[:k]] = False
    return keep.reshape(scores.shape)


def channel_scores(weight: Tensor) -> Tensor:
    """L2 norm of each output channel (filter) divided by ``sqrt`` of its size, ``(C_out,)``."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    return flat.norm(dim=1) / math.sqrt(flat.shape[1])


def magnitude_masks(weights: Mapping[str, Tensor], sparsity: float, scope: str = "layer",
                    structured: bool = False) -> dict[str, Tensor]:
    """Keep masks that prune the smallest-magnitude weights (or channels).

    Args:
        weights: ``layer name -> weight`` (any shape, dim 0 = output channels).
        sparsity: fraction of weights (unstructured) or channels (structured) to prune,
            in ``[0, 1)``; with ``scope="global"`` the fraction over all layers together.
        scope: ``"layer"`` (same sparsity in every layer) or ``"global"`` (one threshold).
        structured: prune whole output channels instead of single weights.

    Returns:
        ``name -> bool mask`` (shape of the weight; ``True`` = keep). Every layer keeps at
        least one weight (one channel).
    """
    s = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise CompressError(f"scope={scope!r} is unknown; use one of {SCOPES}")
    if not weights:
        raise CompressError("no layers to prune")
    masks: dict[str, Tensor] = {}
    if scope == "layer":
        for name, w in weights.items():
            if structured:
                keep_c = _prune_smallest(channel_scores(w), _n_pruned(w.shape[0], s))
                masks[name] = keep_c.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
            else:
                masks[name] = _prune_smallest(w.detach().abs(), _n_pruned(w.numel(), s))
        return masks
    # global: one threshold over all scores, each layer keeps at least one element
    if structured:
        scores = {n: channel_scores(w) for n, w in weights.items()}
        sizes = {n: w[0].numel() for n, w in weights.items()}
    else:
        scores = {n: w.detach().abs().reshape(-1).float() for n, w in weights.items()}
        sizes = {n: 1 for n in weights}
    # prune by weight count: a channel of a structured layer counts its filter size
    all_scores = torch.cat([v.reshape(-1) for v in scores.values()])
    all_sizes = torch.cat([torch.full((v.numel(),), sizes[n], dtype=torch.float64)
                           for n, v in scores.items()])
    order = torch.argsort(all_scores, stable=True)
    cum = torch.cumsum(all_sizes[order], 0)
    target = s * float(all_sizes.sum())
    n_cut = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64),
                                   right=True))
    pruned = torch.zeros(all_scores.numel(), dtype=torch.bool)
    pruned[order[:n_cut]] = True
    start = 0
    for name, w in weights.items():
        n = scores[name].numel()
        keep = ~pruned[start:start + n]
        start += n
        if not keep.any():
            keep[int(torch.argmax(scores[name]))] = True
        if structured:
            masks[name] = keep.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
        else:
            masks[name] = keep.reshape(w.shape)
    return masks


def mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of pruned weights over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)


@dataclass(frozen=True)
class CubicSchedule:
    """Gradual sparsity ``s(t)`` of Zhu & Gupta (2017), ``t`` in optimizer steps.

    ``s(t) = s_f + (s_i - s_f)·(1 - (t - t_0)/(t_1 - t_0))^3`` between ``begin`` (``t_0``) and
    ``end`` (``t_1``); ``s_i`` before, ``s_f`` after. Pruning happens every ``every`` steps.
    """

    final: float
    begin: int = 0
    end: int = 1
    initial: float = 0.0
    every: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.final, "final sparsity")
        check_sparsity(self.initial, "initial sparsity")
        if self.initial > self.final:
            raise CompressError(f"initial sparsity {self.initial} exceeds the final "
                                f"sparsity {self.final}")
        if self.begin < 0 or self.end < self.begin or self.every < 1:
            raise CompressError(f"schedule steps must satisfy 0 <= begin <= end and every >= 1"
                                f", got begin={self.begin}, end={self.end}, every={self.every}")

    def at(self, step: int) -> float:
        """Target sparsity after ``step`` optimizer steps."""
        if step <= self.begin:
            return self.initial
        if step >= self.end:
            return self.final
        frac = (step - self.begin) / max(self.end - self.begin, 1)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** 3

    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed after ``step`` steps."""
        return step == self.end or (
            self.begin <= step < self.end and (step - self.begin) % self.every == 0)


@torch.no_grad()
def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Set the pruned entries of each parameter to exactly ``0.0`` (in place)."""
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def mask_gradients(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the gradients of pruned entries (in place; parameters without grad are skipped)."""
    for name, mask in masks.items():
        g = params[name].grad
        if g is not None:
            g.mul_(mask.to(device=g.device, dtype=g.dtype))
