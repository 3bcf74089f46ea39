"""Minimal shared training and evaluation loops for classifiers.

Every method (demo, PTQ evaluation, fine-tuning) uses these so that accuracy
is measured one way. Batches are ``(inputs, labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bitsmith.errors import InputError


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy in percent, mean cross-entropy loss, number of examples, and top-5
    accuracy in percent (``None`` when the model scores fewer than 5 classes)."""

    accuracy: float
    loss: float
    count: int
    top5: float | None = None


class UnlabelledDataError(InputError):
    """Accuracy was asked of data without class labels."""


def _pair(batch: object) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise UnlabelledDataError(
        "accuracy needs labelled batches (inputs, labels), but the data yields "
        f"{type(batch).__name__} without labels; give labelled data or a metric function")


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> EvalResult:
    """Top-1 / top-5 accuracy (%) and mean loss of ``model`` over ``data`` (eval mode, no grad).

    The one classification loop of bitsmith: :func:`bitsmith.evaluate` (the public,
    metric-aware entry point) and every producer measure accuracy through it.

    Args:
        data: batches ``(inputs (N, ...), labels int64 (N,))``.
        max_batches: stop after this many batches.

    Raises:
        UnlabelledDataError: a batch without labels.
        ValueError: no examples at all.
    """
    was_training = model.training
    model.eval()
    correct = correct5 = total = 0
    loss_sum = 0.0
    top5 = True
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            x, y = _pair(batch)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            top5 = top5 and logits.shape[1] >= 5
            if top5:
                correct5 += (logits.topk(5, 1).indices == y[:, None]).any(1).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation data is empty")
    return EvalResult(100.0 * correct / total, loss_sum / total, total,
                      100.0 * correct5 / total if top5 else None)


def fit(model: nn.Module, data: Iterable, epochs: int, lr: float = 1e-3,
        weight_decay: float = 0.0, on_epoch: Callable[[int, float], None] | None = None,
        device: str | torch.device = "cpu") -> nn.Module:
    """Train with AdamW and a cosine schedule; ``on_epoch(epoch, mean_loss)`` after each epoch.

    Stops with a ``FloatingPointError`` naming the epoch if the loss becomes NaN/inf.
    """
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(epochs * len(data), 1)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in data:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * y.numel()
            n += y.numel()
        if on_epoch is not None:
            on_epoch(epoch, total / max(n, 1))
    model.eval()
    return model
