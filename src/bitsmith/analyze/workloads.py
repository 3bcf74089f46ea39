"""``bitsmith analyze``'s workloads: a thin alias of :mod:`bitsmith.inputs.workload`.

Kept for the ``analyze`` command's call ``load_workload(name, val_images=..., epochs=...,
seed=...)``; everything is resolved by the one registry. CIFAR ResNets calibrate on 512
lossless training images (stratified) and validate on the first ``val_images`` JPEG
validation images; ``digits`` calibrates on its train split and validates on (up to
``val_images`` of) its val split.
"""

from __future__ import annotations

from typing import Any

from bitsmith.inputs.workload import CIFAR_MODELS, WORKLOADS, Workload
from bitsmith.inputs.workload import load_workload as _load

ANALYZE_CALIBRATION = 512

__all__ = ["WORKLOADS", "Workload", "load_workload"]


def load_workload(name: str, *, val_images: int = 1000, epochs: int = 30, seed: int = 0,
                  **kw: Any) -> Workload:
    """:func:`bitsmith.inputs.workload.load_workload` with ``analyze``'s defaults."""
    if name in CIFAR_MODELS:
        kw.setdefault("calibration_size", ANALYZE_CALIBRATION)
    return _load(name, validation_size=val_images, epochs=epochs, seed=seed, **kw)
