"""Minimal shared training and evaluation loops for classifiers.

Every method (demo, PTQ evaluation, fine-tuning) uses these so that accuracy
is measured one way. Batches are ``(inputs, labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy in percent, mean cross-entropy loss, number of examples."""

    accuracy: float
    loss: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> EvalResult:
    """Top-1 accuracy (%) and mean loss of ``model`` over ``data`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluation data is empty")
    return EvalResult(100.0 * correct / total, loss_sum / total, total)


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
