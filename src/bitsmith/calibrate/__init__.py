"""Calibration: streaming tensor statistics and clipping-range observers."""

from bitsmith.calibrate.observers import compute_range
from bitsmith.calibrate.stats import TensorStats

__all__ = ["TensorStats", "compute_range"]
