"""Reading checkpoints safely and loading them strictly into a model.

Accepted files (recognised by their first bytes, not their names):

* **safetensors** (``.safetensors``): the header and the file size are checked before
  reading, so a truncated or padded file is refused with the byte counts;
* **torch zip** (``torch.save`` since 1.6): every member's CRC-32 is checked first
  (a corrupt file names the member), then ``torch.load(..., weights_only=True)``;
* **legacy torch** (the pre-zip pickle format, e.g. the akamaster ``.th`` files):
  ``torch.load(..., weights_only=True)``.

Nothing is ever unpickled with ``weights_only=False``: a file that holds Python objects
(a pickled ``nn.Module``, an optimizer with custom classes) is refused with the fix.

The state dict is the file itself or the mapping under ``state_dict`` /
``model_state_dict`` / ``model``; ``module.`` (DataParallel / DDP) and ``_orig_mod.``
(``torch.compile``) prefixes are stripped when every key carries them and the model's do
not. The load is strict: a mismatch names up to 10 missing keys, 10 unexpected keys and
10 shape mismatches in one line.

A SHA-256 can be checked: given explicitly (``sha256=``, a prefix of at least 8 hex digits),
or from a torch.hub-style name ``<name>-<hex prefix>.<ext>`` when the prefix contains a
letter (so date-stamped names such as ``ckpt-20240101.pt`` are not mistaken for hashes).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bitsmith.errors import InputError
from bitsmith.safetensors_io import read_safetensors
from bitsmith.userspec import one_line

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED = 10
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_SAVE_HINT = ("re-save it with torch.save(model.state_dict(), path) or "
              "safetensors.torch.save_file(model.state_dict(), path)")


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit the model."""


def checkpoint_format(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"`` from the file's first bytes.

    Raises:
        CheckpointError: the file is missing, empty, or none of the three.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; check the path")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); the file is "
                              "truncated, copy it again")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    header_fits = len(head) == 9 and 8 + int.from_bytes(head[:8], "little") <= size
    if (header_fits and head[8:9] == b"{") or path.suffix == ".safetensors":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    raise CheckpointError(f"checkpoint {str(path)!r} is neither a safetensors file nor a "
                          "torch.save file; give the file that holds the weights")


def verify_sha256(path: Path, expected: str | None = None) -> None:
    """Check the file's SHA-256 against ``expected`` (a hex prefix of >= 8 digits) or, when
    that is ``None``, against a torch.hub-style hash in its name (see the module docstring).

    Raises:
        CheckpointError: the digest does not start with the expected prefix.
    """
    if expected is None:
        m = _HUB_HASH.search(path.name)
        if m is None or not re.search("[a-f]", m.group(1)):
            return
        expected, source = m.group(1), "its file name"
    else:
        expected = expected.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
            raise CheckpointError(f"sha256 {expected!r} for {str(path)!r} must be 8 to 64 "
                                  "hex digits")
        source = "the given sha256"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has SHA-256 {digest[:16]}..., but {source} says "
            f"{expected}...; the file is corrupt or not the one you meant, copy it again")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt "
                              f"({one_line(err)}); copy it again") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: member {bad!r} fails its "
                              "CRC-32 check (wrong hash); copy it again")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err).lower():
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds pickled Python objects that safe loading "
                f"(weights_only=True) refuses to run; {_SAVE_HINT}") from err
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({one_line(err)}); "
                              "the file is truncated or corrupt, copy it again") from err
    except (EOFError, RuntimeError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({one_line(err)}); "
                              "the file is truncated or corrupt, copy it again") from err


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def find_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object (see the module docstring).

    Raises:
        CheckpointError: no mapping of tensors at the top level or under the known keys.
    """
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:MAX_LISTED])
        raise CheckpointError(
            f"checkpoint {source!r} holds no state dict: its top-level keys are {keys}; "
            f"expected parameter tensors or a dict with one of {STATE_DICT_KEYS}")
    raise CheckpointError(f"checkpoint {source!r} holds a {type(obj).__name__}, not a state "
                          f"dict; {_SAVE_HINT}")


def read_state_dict(path: str | Path, *, sha256: str | None = None) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (CPU tensors), after the integrity checks.

    Raises:
        CheckpointError: missing, empty, truncated, corrupt (CRC / size / hash), unsafe
            (pickled objects), or holding no state dict.
    """
    path = Path(path).expanduser()
    fmt = checkpoint_format(path)
    verify_sha256(path, sha256)
    if fmt == "safetensors":
        return find_state_dict(read_safetensors(path, what="checkpoint", error=CheckpointError),
                               str(path))
    if fmt == "torch-zip":
        _check_zip(path)
    return find_state_dict(_torch_load(path), str(path))


def strip_prefixes(state: Mapping[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` (in any order, repeatedly) when every key of
    ``state`` carries the prefix and the model's own keys do not."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in out) and not (
                    model_keys and all(k.startswith(prefix) for k in model_keys)):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """One line describing how ``state`` does not fit ``model`` (``None`` if it fits).

    BatchNorm ``num_batches_tracked`` counters may be absent (old checkpoints; PyTorch
    fills them in).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
    return "; ".join(parts) or None


def load_checkpoint(model: nn.Module, path: str | Path, *, sha256: str | None = None,
                    model_name: str = "the model") -> nn.Module:
    """Load a checkpoint file strictly into ``model`` (in place) and return it in eval mode.

    Args:
        model: the freshly built model.
        path: safetensors or torch file (see the module docstring).
        sha256: optional expected SHA-256 (hex prefix, >= 8 digits).
        model_name: how the model was given, for the error message.

    Raises:
        CheckpointError: see :func:`read_state_dict`; or the keys/shapes do not match (the
            message lists up to 10 of each kind); ``model`` is left unchanged then.
    """
    path = Path(path).expanduser()
    state = read_state_dict(path, sha256=sha256)
    state = strip_prefixes(state, set(model.state_dict()))
    problem = state_dict_mismatch(model, state)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit {model_name}: {problem}; build the model "
            "the checkpoint was saved from (check the model and its keyword arguments)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {model_name}: "
                              f"{one_line(err)}") from err
    return model.eval()
