"""PLACEHOLDER (min/max only) -- to be replaced by the full implementation."""

from __future__ import annotations

import torch
from torch import Tensor


class TensorStats:
    def __init__(self, channel_axis: int | None = None, keep_channel_hist: bool = False,
                 bins: int = 2048) -> None:
        self.channel_axis = channel_axis
        self.min: Tensor | None = None
        self.max: Tensor | None = None
        self.ch_min: Tensor | None = None
        self.ch_max: Tensor | None = None

    @classmethod
    def of(cls, x: Tensor, channel_axis: int | None = None) -> TensorStats:
        s = cls(channel_axis)
        s.update(x)
        return s

    @property
    def is_empty(self) -> bool:
        return self.min is None

    def update(self, x: Tensor) -> None:
        x = x.detach().float()
        mn, mx = x.min(), x.max()
        self.min = mn if self.min is None else torch.minimum(self.min, mn)
        self.max = mx if self.max is None else torch.maximum(self.max, mx)
        if self.channel_axis is not None:
            xc = x.movedim(self.channel_axis, 0).flatten(1)
            cmn, cmx = xc.min(1).values, xc.max(1).values
            self.ch_min = cmn if self.ch_min is None else torch.minimum(self.ch_min, cmn)
            self.ch_max = cmx if self.ch_max is None else torch.maximum(self.ch_max, cmx)
