"""Calibration: streaming tensor statistics and clipping-range observers."""

from bitsmith.calibrate.observers import METHODS, compute_range
from bitsmith.calibrate.stats import TensorStats

__all__ = ["METHODS", "TensorStats", "compute_range"]
