"""Errors of the tuner; the CLI maps :class:`TuneError` to exit code 2, infeasible to 3."""

from __future__ import annotations

from bitsmith.errors import InputError


class TuneError(InputError):
    """Bad input to the tuner (tolerance, budget, storage URL, study mismatch, ...)."""


class SpaceError(TuneError):
    """The search space is empty or malformed."""


class StorageError(TuneError):
    """The Optuna storage URL cannot be opened."""
