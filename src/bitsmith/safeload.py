"""The one low-level reader of untrusted weight files: nothing is ever unpickled unsafely,
and every failure is one :class:`CheckpointError` line naming the file and the fix.

Files are recognised by their first bytes (:func:`checkpoint_format`), not their names:

* **safetensors**: ``<u64 header length N><N bytes of JSON><data>``; before reading, the
  file size must equal ``8 + N + end of the last tensor`` (a truncated or padded file is
  refused with both byte counts) (:func:`read_safetensors`);
* **torch zip** (``torch.save`` since PyTorch 1.6): every member's CRC-32 is checked
  first (a corrupt file names the member), then ``torch.load(weights_only=True)``;
* **legacy torch** (the pre-zip pickle format, e.g. the akamaster ``.th`` files):
  ``torch.load(weights_only=True)``.

A file holding Python objects beyond tensors and plain containers (a pickled
``nn.Module``) is refused, never run (:func:`load_weights`). SHA-256: an expected hex prefix
(:func:`verify_sha256`), or a torch.hub-style name ``<name>-<hex>.<ext>``
(:func:`check_sha256_prefix`; only when the hex part has a letter a-f, so a date such as
``ckpt-20240101.pt`` is not mistaken for a hash).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from bitsmith.errors import InputError, one_line

FORMATS = ("safetensors", "torch-zip", "torch-legacy")
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
SAVE_HINT = ("save it with torch.save(model.state_dict(), path) or "
             "safetensors.torch.save_file(model.state_dict(), path)")


class CheckpointError(InputError, RuntimeError):
    """A weight file is missing, unreadable, truncated, modified, or holds more than weights
    (also a ``RuntimeError``, what a failed ``torch.load`` and the hash check raised before)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The weight file does not exist (also a ``FileNotFoundError``)."""


def checkpoint_format(path: str | Path, what: str = "checkpoint") -> str:
    """``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"`` from the file's first bytes.

    Raises:
        CheckpointError: missing, empty, or none of the three.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {str(path)!r} not found; check the path")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {str(path)!r} is empty (0 bytes); the file is "
                              "truncated, copy it again")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    header_fits = len(head) == 9 and 8 + int.from_bytes(head[:8], "little") <= size
    if (header_fits and head[8:9] == b"{") or path.suffix == ".safetensors":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    raise CheckpointError(f"{what} {str(path)!r} is neither a safetensors file nor a "
                          "torch.save file; give the file that holds the weights")


def verify_sha256(path: str | Path, expected: str, what: str = "checkpoint") -> None:
    """Check that the file's SHA-256 starts with ``expected`` (8 to 64 hex digits).

    Raises:
        CheckpointError: malformed ``expected`` or a different digest.
    """
    path = Path(path)
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise CheckpointError(f"sha256 {expected!r} for {str(path)!r} must be 8 to 64 hex "
                              "digits")
    _compare_digest(path, expected, "the given sha256", what)


def check_sha256_prefix(path: str | Path, what: str = "checkpoint", *,
                        require_letter: bool = True) -> None:
    """Verify a torch.hub-style name ``<name>-<sha256 prefix>.<ext>`` against the file bytes.

    Names without such a prefix are not checked; nor, with ``require_letter``, prefixes
    without a letter a-f (dates); pass ``False`` for files known to follow the convention.

    Raises:
        CheckpointError: the file's SHA-256 does not start with the prefix in its name.
    """
    path = Path(path)
    m = _HUB_HASH.search(path.name)
    if m is not None and (not require_letter or re.search("[a-f]", m.group(1))):
        _compare_digest(path, m.group(1), "its file name", what)


def _compare_digest(path: Path, expected: str, source: str, what: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise CheckpointError(
            f"{what} {str(path)!r} has SHA-256 {digest[:16]}..., but {source} says "
            f"{expected}...; the file is corrupt or not the one you meant, copy it again")


def read_safetensors(path: str | Path, what: str = "checkpoint",
                     error: type[InputError] = CheckpointError) -> dict[str, Any]:
    """All tensors of a safetensors file (CPU), after the size check.

    Args:
        what: how the file is named in messages (``"checkpoint"``, ``"data file"``).
        error: the :class:`InputError` subclass to raise.

    Raises:
        error: truncated, padded, a corrupt header, or unreadable.
    """
    path = Path(path)
    label = f"{what} {str(path)!r}"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if size < 8 + n:
            raise error(f"{label} is truncated: its safetensors header says {n:,} header bytes "
                        f"but the file has {size:,} bytes in all; copy it again")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise error(f"{label} has a corrupt safetensors header ({one_line(err)}); "
                        "copy it again") from err
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        kind = "truncated" if size < expected else "corrupt (extra bytes after the tensors)"
        raise error(f"{label} is {kind}: its header describes {expected:,} bytes, the file "
                    f"has {size:,}; copy it again")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as err:
        raise error(f"{label} cannot be read as safetensors: {one_line(err)}; "
                    "copy it again") from err


def _check_zip(path: Path, what: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise CheckpointError(f"{what} {str(path)!r} is truncated or corrupt "
                              f"({one_line(err)}); copy it again") from err
    if bad is not None:
        raise CheckpointError(f"{what} {str(path)!r} is corrupt: member {bad!r} fails its "
                              "CRC-32 check (wrong hash); copy it again")


def load_weights(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` of a torch file, after the zip CRC check.

    Raises:
        CheckpointError: missing (also a ``FileNotFoundError``), holding Python objects
            beyond weights (refused, never executed), truncated, corrupt, or not a checkpoint.
    """
    import torch

    path = Path(path)
    if checkpoint_format(path, what) == "torch-zip":
        _check_zip(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err).lower():
            raise CheckpointError(
                f"{what} {str(path)!r} holds pickled Python objects that safe loading "
                f"(weights_only=True) refuses to run; {SAVE_HINT}") from err
        raise CheckpointError(f"{what} {str(path)!r} cannot be read ({one_line(err)}); the "
                              "file is truncated or corrupt, copy it again") from err
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError, IndexError) as err:
        raise CheckpointError(f"{what} {str(path)!r} cannot be read ({one_line(err)}); the "
                              "file is truncated or corrupt, copy it again") from err


def read_weights_file(path: str | Path, *, sha256: str | None = None,
                      check_name: bool = True, what: str = "checkpoint") -> Any:
    """The content of a safetensors or torch file after every check above: a dict of
    tensors (safetensors) or whatever ``torch.load(weights_only=True)`` returns.

    Args:
        sha256: expected SHA-256 prefix; ``None`` checks a torch.hub-style name instead
            (unless ``check_name`` is off).

    Raises:
        CheckpointError: see :func:`checkpoint_format`, :func:`verify_sha256`,
            :func:`read_safetensors`, :func:`load_weights`.
    """
    path = Path(path).expanduser()
    fmt = checkpoint_format(path, what)
    if sha256 is not None:
        verify_sha256(path, sha256, what)
    elif check_name:
        check_sha256_prefix(path, what)
    if fmt == "safetensors":
        return read_safetensors(path, what)
    return load_weights(path, what)
