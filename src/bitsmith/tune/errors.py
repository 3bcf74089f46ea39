"""Errors of the tuner; the CLI maps :class:`TuneError` to exit code 2, infeasible to 3."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bitsmith.errors import InputError


class TuneError(InputError):
    """Bad input to the tuner (tolerance, budget, storage URL, study mismatch, ...)."""


class SpaceError(TuneError):
    """The search space is empty or malformed."""


class StorageError(TuneError):
    """The Optuna storage URL cannot be opened."""


def check_keys(data: Mapping[str, Any], valid: Iterable[str], where: str,
               error: type[TuneError] = TuneError) -> None:
    """:func:`bitsmith.config.check_keys` raising ``error`` (a :class:`TuneError`), so the
    tuner's callers see one error family."""
    from bitsmith.config import ConfigError
    from bitsmith.config import check_keys as strict_keys

    try:
        strict_keys(data, valid, where)
    except ConfigError as err:
        raise error(str(err)) from None
