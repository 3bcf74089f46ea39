"""PLACEHOLDER (min/max only) -- to be replaced by the full implementation."""

from __future__ import annotations

from torch import Tensor

from bitsmith.calibrate.stats import TensorStats


def compute_range(stats: TensorStats, method: str, bits: int, *, symmetric: bool,
                  per_channel: bool, percentile: float = 99.99) -> tuple[Tensor, Tensor]:
    if per_channel:
        return stats.ch_min, stats.ch_max
    return stats.min, stats.max
