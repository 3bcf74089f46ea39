"""The input errors: each an :class:`~bitsmith.errors.InputError` (exit code 2) whose one-line
message names the input (the spec, file or option) and the fix."""

from __future__ import annotations

from bitsmith.errors import InputError
from bitsmith.safeload import CheckpointError

__all__ = ["CheckpointError", "DataSpecError", "MetricError", "ModelSpecError"]


class ModelSpecError(InputError):
    """A model spec that cannot be resolved: unknown name, missing or failing factory,
    bad keyword arguments, or a factory that returns no ``nn.Module``."""


class DataSpecError(InputError):
    """Data that cannot be used: missing, empty, unreadable, unlabelled where labels are
    needed, overlapping splits, or inputs the model cannot take."""


class MetricError(InputError):
    """A metric that cannot be loaded, raises, or returns something other than a number."""
