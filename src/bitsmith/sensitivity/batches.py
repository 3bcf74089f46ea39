"""Materialise a fixed evaluation subset once, so every candidate sees the same images."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def fixed_batches(data: Iterable, max_batches: int | None = None,
                  max_examples: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first batches of ``data`` as a list of ``(inputs, labels)`` tensors.

    Args:
        data: a DataLoader or any iterable of ``(inputs (N, ...), labels (N,))`` batches.
        max_batches: keep at most this many batches.
        max_examples: keep at most this many examples (the last batch is cut).

    Raises:
        ValueError: the data yields no batch, or a batch is not an ``(inputs, labels)`` pair.
    """
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen = 0
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if max_examples is not None and seen >= max_examples:
            break
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2
                and isinstance(batch[0], torch.Tensor) and isinstance(batch[1], torch.Tensor)):
            raise ValueError("sensitivity analysis needs (inputs, labels) batches, got "
                             f"{type(batch).__name__}")
        x, y = batch[0], batch[1]
        if max_examples is not None:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        out.append((x, y))
        seen += len(y)
    if not out:
        raise ValueError("the sensitivity data yielded no batch; pass a non-empty loader")
    return out


def channels_last(batches: list[tuple[torch.Tensor, torch.Tensor]]
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """4-D image batches in channels-last layout (about 2x faster CPU convolutions)."""
    return [(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, y)
            for x, y in batches]
