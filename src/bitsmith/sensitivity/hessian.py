"""Estimated sensitivity from the Hessian trace (HAWQ-V2, Dong et al., NeurIPS 2020).

For layer ``l`` with ``n_l`` weights, the average curvature ``Tr(H_l) / n_l`` of
the loss with respect to its (BN-folded) weights is estimated with Hutchinson's
method, ``Tr(H) = E_v[v^T H v]`` with Rademacher ``v``, and multiplied by the
squared quantization perturbation::

    hessian[l, c] = Tr(H_l) / n_l * ||Q_c(W_l) - W_l||^2

One Rademacher vector covers all layers at once (the cross terms vanish in
expectation), so every iteration is a single Hessian-vector product by double
back-propagation. The gradient graph of each batch is built once and reused for
all iterations. Negative trace estimates (noise, or negative curvature) are
clamped to 0 in the score; the raw traces are kept in ``meta``.
Cost: about ``n_iter`` backward passes over the Hessian batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.scores import Sensitivity
from bitsmith.graph import layer_weight
from bitsmith.progress import track
from bitsmith.quantize import prepare
from bitsmith.sensitivity.batches import fixed_batches
from bitsmith.sensitivity.perturbation import perturbation_norms, weight_perturbations


def hutchinson_traces(float_model: nn.Module, layer_names: Sequence[str],
                      batches: list[tuple[torch.Tensor, torch.Tensor]], n_iter: int = 32,
                      seed: int = 0, progress: bool = False
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Hutchinson estimates of ``Tr(H_l)`` of the mean cross-entropy loss.

    Args:
        float_model: the (BN-folded) float model; its parameters are not changed.
        layer_names: layers whose weight Hessian blocks are traced.
        batches: ``(inputs, labels)`` batches; the loss is their example-weighted mean.
        n_iter: Rademacher vectors per batch.

    Returns:
        ``(trace, stderr)``: ``layer -> Tr(H_l)`` and its standard error (same units:
        loss per squared weight unit, summed over the layer's weights).
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    params = [layer_weight(float_model, n) for n in layer_names]
    saved = [p.requires_grad for p in float_model.parameters()]
    for p in float_model.parameters():
        p.requires_grad_(False)
    for w in params:
        w.requires_grad_(True)
    float_model.eval()
    try:
        samples = _hutchinson_samples(float_model, params, batches, n_iter, seed, progress)
    finally:
        for p, flag in zip(float_model.parameters(), saved):
            p.requires_grad_(flag)
    mean = samples.mean(0)
    err = samples.std(0) / math.sqrt(n_iter) if n_iter > 1 else torch.full_like(mean, math.nan)
    return ({n: float(m) for n, m in zip(layer_names, mean)},
            {n: float(e) for n, e in zip(layer_names, err)})


def _hutchinson_samples(float_model: nn.Module, params: list[torch.Tensor],
                        batches: list[tuple[torch.Tensor, torch.Tensor]], n_iter: int,
                        seed: int, progress: bool) -> torch.Tensor:
    """``(n_iter, len(params))`` float64: ``v^T H_l v`` per Rademacher vector and layer,
    example-weighted over the batches."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(len(y) for _, y in batches)
    samples = torch.zeros(n_iter, len(params), dtype=torch.float64)
    steps = ((b, i) for b in range(len(batches)) for i in range(n_iter))
    grads: tuple[torch.Tensor, ...] = ()
    # the fused CPU kernels of scaled_dot_product_attention (attention layers) have no
    # double backward; the math kernel computes the same function and has one
    with sdpa_kernel(SDPBackend.MATH):
        for b, i in track(steps, "Hessian trace (Hutchinson)", len(batches) * n_iter, progress):
            x, y = batches[b]
            if i == 0:
                loss = F.cross_entropy(float_model(x), y)
                grads = torch.autograd.grad(loss, params, create_graph=True)
            vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
            gv = sum(((g * v).sum() for g, v in zip(grads, vs)), torch.zeros(()))
            hvs = torch.autograd.grad(gv, params, retain_graph=i < n_iter - 1)
            weight = len(y) / total
            samples[i] += torch.tensor([float((hv * v).sum()) * weight for hv, v in zip(hvs, vs)],
                                       dtype=torch.float64)
    return samples


def estimate_hessian(model: nn.Module, space: CandidateSpace, data: Iterable, *,
                     n_iter: int = 32, max_batches: int | None = None,
                     max_examples: int | None = 256, seed: int = 0, progress: bool = False
                     ) -> Sensitivity:
    """HAWQ-V2 sensitivity ``Tr(H_l)/n_l * ||Q(W_l) - W_l||^2`` for every candidate.

    Args:
        model: the float model (not modified; BN is folded on a copy).
        space: layers and candidates.
        data: labelled batches (validation split); at most ``max_batches`` /
            ``max_examples`` are used (256 images are typically enough to rank).
        n_iter: Rademacher vectors per batch (standard errors are in ``meta``).

    Returns:
        :class:`Sensitivity` with the ``hessian`` score; ``meta["hessian_trace"]``
        holds ``Tr(H_l)`` and ``meta["hessian_trace_stderr"]`` its standard error.
    """
    t0 = time.perf_counter()
    batches = fixed_batches(data, max_batches, max_examples)
    float_model, _, _ = prepare(model, batches[0][0][:1])
    names = space.names
    trace, err = hutchinson_traces(float_model, names, batches, n_iter, seed, progress)
    norms = perturbation_norms(weight_perturbations(float_model, space))
    scores = {n: [max(trace[n], 0.0) / space.table[n].weight_params * d for d in norms[n]]
              for n in names}
    meta = {"hessian_trace": trace, "hessian_trace_stderr": err, "hessian_iterations": n_iter,
            "hessian_examples": sum(len(y) for _, y in batches)}
    return Sensitivity(space, {"hessian": scores}, {"hessian": time.perf_counter() - t0}, meta)
