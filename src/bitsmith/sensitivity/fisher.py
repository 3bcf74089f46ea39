"""Estimated sensitivity from per-example gradients (empirical Fisher).

With ``g_n`` the gradient of example ``n``'s cross-entropy loss with respect to
layer ``l``'s (BN-folded) weights, and ``dW = Q_c(W_l) - W_l``:

* ``fisher``      = 1/2 · mean_n (g_n · dW)^2  — the quadratic form of the layer's
  full empirical-Fisher block ``F_l = mean_n g_n g_n^T``, i.e. ``1/2 dW^T F_l dW``,
  the second-order loss change with the Fisher standing in for the Hessian
  (the "Σ (g ⊙ ΔW)²" estimate summed per example before squaring);
* ``fisher_diag`` = 1/2 · Σ_j F_jj dW_j^2 with ``F_jj = mean_n g_nj^2`` — the
  diagonal approximation (as in Fisher-based pruning / mixed-precision work).

Both come from one pass of per-example gradients (``torch.func.vmap`` over
``torch.func.grad``; a per-example loop when the model cannot be vmapped).
Cost: about one backward pass per chunk of examples, plus a dot product per
candidate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.allocation.scores import Sensitivity
from bitsmith.graph import layer_weight
from bitsmith.progress import track
from bitsmith.quantize import prepare
from bitsmith.sensitivity.batches import fixed_batches
from bitsmith.sensitivity.perturbation import weight_perturbations


def per_example_grads(float_model: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor
                      ) -> dict[str, Tensor]:
    """Gradients of each example's cross-entropy w.r.t. ``weights``.

    Args:
        weights: ``parameter name -> tensor`` (e.g. ``"conv1.weight"``).
        x: inputs ``(N, ...)``; y: labels ``(N,)``.

    Returns:
        ``parameter name -> (N, *weight.shape)``.
    """
    from torch.func import functional_call, grad, vmap

    def loss_one(w: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(float_model, w, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    # An outer no_grad keeps the other parameters out of any graph; torch.func.grad
    # still differentiates with respect to ``weights``.
    with torch.no_grad():
        try:
            return vmap(grad(loss_one), in_dims=(None, 0, 0))(weights, x, y)
        except (RuntimeError, NotImplementedError, ValueError):  # non-vmappable op: loop
            per = [grad(loss_one)(weights, x[i], y[i]) for i in range(len(y))]
            return {k: torch.stack([p[k] for p in per]) for k in weights}


def estimate_fisher(model: nn.Module, space: CandidateSpace, data: Iterable, *,
                    chunk: int = 50, max_batches: int | None = None,
                    max_examples: int | None = 1000, progress: bool = False) -> Sensitivity:
    """Empirical-Fisher sensitivities ``fisher`` and ``fisher_diag`` for every candidate.

    Args:
        model: the float model (not modified; BN is folded on a copy).
        space: layers and candidates.
        data: labelled batches (validation split), at most ``max_batches`` /
            ``max_examples`` used.
        chunk: examples per vmapped gradient call (memory ~ chunk x #weights floats).

    Returns:
        :class:`Sensitivity` with scores ``fisher`` and ``fisher_diag`` (loss units, nats),
        both reporting the time of the shared pass.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    t0 = time.perf_counter()
    batches = fixed_batches(data, max_batches, max_examples)
    float_model, _, _ = prepare(model, batches[0][0][:1])
    float_model.eval()
    deltas = weight_perturbations(float_model, space)
    keys = {n: f"{n}.weight" for n in space}
    weights = {keys[n]: layer_weight(float_model, n).detach() for n in space}
    flat_d = {n: torch.stack([d.reshape(-1) for d in deltas[n]]) for n in space}  # (C, n_l)
    quad = {n: torch.zeros(len(space[n]), dtype=torch.float64) for n in space}
    diag = {n: torch.zeros(space.table[n].weight_params, dtype=torch.float64) for n in space}
    chunks = [(x[i:i + chunk], y[i:i + chunk]) for x, y in batches for i in range(0, len(y), chunk)]
    count = 0
    for x, y in track(chunks, "per-example gradients (Fisher)", len(chunks), progress):
        grads = per_example_grads(float_model, weights, x, y)
        for n in space:
            g = grads[keys[n]].reshape(len(y), -1).double()  # (B, n_l)
            quad[n] += ((g @ flat_d[n].double().T) ** 2).sum(0)
            diag[n] += (g ** 2).sum(0)
        count += len(y)
    fisher = {n: (0.5 * quad[n] / count).tolist() for n in space}
    fdiag = {n: [0.5 * float((diag[n] / count * flat_d[n][c].double() ** 2).sum())
                 for c in range(len(space[n]))] for n in space}
    seconds = time.perf_counter() - t0
    return Sensitivity(space, {"fisher": fisher, "fisher_diag": fdiag},
                       {"fisher": seconds, "fisher_diag": seconds},
                       {"fisher_examples": count})
