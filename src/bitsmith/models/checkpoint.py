"""Loading a checkpoint strictly into a model: the model-specific half of weight loading.

The file is read by :mod:`bitsmith.safeload` (format by first bytes, safetensors size check,
zip CRC, SHA-256, ``weights_only=True``). Here: the state dict is the file itself or the
mapping under ``state_dict`` / ``model_state_dict`` / ``model``; ``module.``
(DataParallel / DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped when
every key carries them and the model's do not; the load is strict, and a mismatch names
up to 10 missing keys, 10 unexpected keys and 10 shape mismatches in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

from bitsmith.errors import one_line
from bitsmith.safeload import SAVE_HINT, CheckpointError, read_weights_file

M = TypeVar("M", bound=nn.Module)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED = 10

__all__ = ["CheckpointError", "find_state_dict", "load_checkpoint", "load_state",
           "read_state_dict", "state_dict_mismatch", "strip_prefixes"]


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
                          f"dict; {SAVE_HINT}")


def read_state_dict(path: str | Path, *, sha256: str | None = None, check_name: bool = True,
                    what: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict of a checkpoint file (CPU tensors), after the integrity checks.

    Raises:
        CheckpointError: see :func:`bitsmith.safeload.read_weights_file`, or no state dict.
    """
    return find_state_dict(read_weights_file(path, sha256=sha256, check_name=check_name,
                                             what=what), str(path))


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


def load_state(model: M, state: Mapping[str, Tensor], *, source: str,
               model_name: str = "the model") -> M:
    """Strip prefixes, check, and load ``state`` strictly into ``model``; eval mode.

    Raises:
        CheckpointError: the keys/shapes do not match (up to 10 of each kind are named);
            ``model`` is left unchanged then.
    """
    state = strip_prefixes(state, set(model.state_dict()))
    problem = state_dict_mismatch(model, state)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {source!r} does not fit {model_name}: {problem}; build the model "
            "the checkpoint was saved from (check the model and its keyword arguments)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {source!r} does not fit {model_name}: "
                              f"{one_line(err)}") from err
    return model.eval()


def load_checkpoint(model: nn.Module, path: str | Path, *, sha256: str | None = None,
                    model_name: str = "the model") -> nn.Module:
    """Load a checkpoint file strictly into ``model`` (in place) and return it in eval mode.

    Args:
        model: the freshly built model.
        path: safetensors or torch file (see :mod:`bitsmith.safeload`).
        sha256: optional expected SHA-256 (hex prefix, >= 8 digits).
        model_name: how the model was given, for the error message.

    Raises:
        CheckpointError: see :func:`read_state_dict` and :func:`load_state`.
    """
    path = Path(path).expanduser()
    return load_state(model, read_state_dict(path, sha256=sha256), source=str(path),
                      model_name=model_name)
