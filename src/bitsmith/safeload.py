"""Loading PyTorch checkpoint files safely: tensors only, and every failure a clear error.

``torch.load(..., weights_only=True)`` never runs code from the file, but the ways it fails
(a pickle that asks for a Python object, a truncated zip archive, a file that is not a
checkpoint at all) surface as half a dozen exception types with long messages.
:func:`load_weights` turns each into one :class:`CheckpointError` line naming the file and
the fix; :func:`check_sha256_prefix` checks a torch.hub-style ``name-<sha256 prefix>.pt``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from bitsmith.errors import InputError


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file is unreadable, truncated, modified or holds more than weights
    (also a ``RuntimeError``, what a failed ``torch.load`` and the hash check raised before)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def load_weights(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file holds Python objects beyond tensors and plain containers
            (refused, never executed), is truncated or corrupted, or is not a checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{what} {path} was refused: it holds Python objects, not only weights, and "
                "bitsmith never unpickles them; save it with torch.save(model.state_dict()) "
                "or as safetensors") from None
        raise CheckpointError(f"{what} {path} is not a readable checkpoint (truncated or "
                              f"corrupted?): {_first_line(err)}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError, IndexError) as err:
        raise CheckpointError(f"{what} {path} is not a readable checkpoint (truncated or "
                              f"corrupted?): {_first_line(err)}") from None


def check_sha256_prefix(path: str | Path, what: str = "checkpoint") -> None:
    """Verify a torch.hub-style name ``<name>-<sha256 prefix>.<ext>`` against the file bytes
    (names without such a prefix are not checked).

    Raises:
        CheckpointError: the file's SHA-256 does not start with the prefix in its name.
    """
    path = Path(path)
    m = re.search(r"-([0-9a-f]{8,})\.[A-Za-z]+$", path.name)
    if not m:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(m.group(1)):
        raise CheckpointError(
            f"{what} {path}: SHA-256 {digest[:16]}... does not start with {m.group(1)} from "
            "the file name; the file is corrupt or was modified: restore the original")
