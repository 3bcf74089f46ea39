"""Errors raised by the export package."""

from __future__ import annotations

from bitsmith.errors import InputError


class ExportError(InputError):
    """The model or its Policy cannot be exported in the requested format (the message says why)."""


class ArtifactError(InputError):
    """A packed artifact is missing, truncated, tampered with or does not fit the given model."""


class ExportWarning(UserWarning):
    """The export succeeded but differs from the model in a way the user must know about
    (e.g. a graph specialised to the example's control flow)."""
