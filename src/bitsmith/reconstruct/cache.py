"""The reconstruction cache: one safetensors file per finished unit, written atomically.

A unit's result (the learned integer codes of its layers, its learned activation
parameters, the loss before and after, the time it took) is stored under a key that
covers everything the result depends on (:func:`unit_key`): the unit's nodes, the specs
and calibrated ranges of its layers, the reconstruction settings, a fingerprint of the
calibration data and of the float model's weights and, when units see the quantized
model's input, the chain of every earlier unit's key. Equal keys mean equal results, so
the tuner, the sensitivity analysis and the command line share one folder, and a run
that was killed resumes after its last finished unit. A file that cannot be read is
ignored (and recomputed), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bitsmith.atomic import atomic_path

FORMAT = "bitsmith.reconstruction-cache/1"
log = logging.getLogger("bitsmith.reconstruct")


@dataclass
class UnitResult:
    """What reconstructing one unit produced.

    Attributes:
        codes: layer -> integer grid values ``q`` (the weight's shape; the layer's weight
            becomes ``scale · (q − zero_point)``).
        act_params: layer -> learned parameters of its input quantizer (``learn_act``).
        loss_before, loss_after: reconstruction loss (squared error summed over channels,
            averaged over samples and positions) on all calibration samples with
            round-to-nearest weights and with the learned ones.
        iterations: optimisation steps run.
        seconds: wall time of the optimisation.
    """

    codes: dict[str, Tensor]
    act_params: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()


def tensors_fingerprint(tensors: Sequence[Tensor] | Mapping[str, Tensor]) -> str:
    """SHA-256 over dtypes, shapes and bytes (names too for a mapping)."""
    h = hashlib.sha256()
    items = sorted(tensors.items()) if isinstance(tensors, Mapping) else enumerate(tensors)
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a (float) model's parameters and buffers."""
    return tensors_fingerprint(dict(model.state_dict()))


def _int_dtype(codes: Tensor) -> torch.dtype:
    lo, hi = (int(codes.min()), int(codes.max())) if codes.numel() else (0, 0)
    return torch.int16 if -2 ** 15 <= lo and hi < 2 ** 15 else torch.int32


class ReconstructionCache:
    """A folder of finished units (see the module docstring). Safe to share between runs
    and processes: writes are atomic, so a reader sees a whole file or none."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str) -> UnitResult | None:
        """The stored result for ``key``, or ``None`` (missing or unreadable file)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["bitsmith"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError("not a reconstruction-cache entry for this key")
        except Exception as err:  # noqa: BLE001 - any damage means: recompute
            log.warning("ignoring unreadable reconstruction cache file %s: %s", path, err)
            self.misses += 1
            return None
        codes = {k[len("codes/"):]: v.to(torch.float32) for k, v in tensors.items()
                 if k.startswith("codes/")}
        acts: dict[str, dict[str, Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("act/"):
                layer, param = k[len("act/"):].rsplit("/", 1)
                acts.setdefault(layer, {})[param] = v
        self.hits += 1
        return UnitResult(codes, acts, meta["loss_before"], meta["loss_after"],
                          meta["iterations"], meta["seconds"])

    def store(self, key: str, result: UnitResult, unit: str) -> Path:
        """Write ``result`` atomically under ``key``; returns the file."""
        from safetensors.torch import save_file

        tensors = {f"codes/{n}": c.to(_int_dtype(c)).contiguous() for n, c in result.codes.items()}
        for layer, params in result.act_params.items():
            for name, value in params.items():
                tensors[f"act/{layer}/{name}"] = value.detach().float().contiguous()
        meta = {"format": FORMAT, "key": key, "unit": unit, "loss_before": result.loss_before,
                "loss_after": result.loss_after, "iterations": result.iterations,
                "seconds": result.seconds}
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"bitsmith": json.dumps(meta)})
        return path
