"""Resumable training checkpoints: ``<checkpoint_dir>/last.pt``, written atomically.

A checkpoint holds the model, optimizer, scheduler, step, epoch, position within the
epoch, RNG states (torch, CUDA, numpy, python), callback states and the history, as plain
tensors and containers only, so :func:`load_checkpoint` reads it with ``weights_only=True``
(no pickle of arbitrary objects).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.atomic import atomic_path
from bitsmith.errors import InputError
from bitsmith.safeload import CheckpointError, load_weights

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "bitsmith.train/1"


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain tensors, numbers and tuples."""
    np_state: Any = np.random.get_state()  # a tuple (the stub says dict)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def callback_keys(callbacks: Sequence[object]) -> list[str]:
    """Stable keys of the callbacks' states in a checkpoint (position and class name)."""
    return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(callbacks)]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`bitsmith.training.train` (``weights_only=True``).

    Raises:
        InputError: the file does not exist.
        CheckpointError: the file is truncated, holds more than weights, or is not a bitsmith
            training checkpoint (through :func:`bitsmith.safeload.load_weights`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    data = load_weights(path, "training checkpoint", map_location)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a bitsmith training checkpoint (format "
                              f"{CHECKPOINT_FORMAT!r}); delete it or point checkpoint_dir "
                              "elsewhere")
    return data


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file: a crash leaves the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **obj}, tmp)
