"""The deterministic split rule and the overlap check between splits.

**Split rule** (:func:`split_indices`): one source of ``N`` items is cut into parts with the
given fractions (default calibration 20 %, validation 40 %, test 40 %); part sizes are the
largest-remainder rounding of ``N * fraction``. With labels the cut is stratified: each
class (in sorted label order) is shuffled with ``numpy.random.default_rng(seed)`` and its
``k``-th of ``n_c`` items gets the key ``(k + 1/2) / n_c``; all items sorted by key (ties
at random) are cut at the part sizes, so every part holds each class in proportion (within
one item). Without labels the whole set is shuffled once. Each part is returned in a seeded
random order, so any prefix (the tuner validates on growing prefixes) is roughly
stratified. Same files + same seed = same split, on any machine.

**Overlap check** (:func:`check_disjoint`): items are fingerprinted by file path (image
folders) and by a BLAKE2b hash of their input bytes; two splits that share a fingerprint
are refused, naming an example pair. Datasets bitsmith built are checked completely; other
map-style datasets on up to :data:`MAX_CHECKED` evenly spaced items; iterables without
``__len__`` / ``__getitem__`` cannot be checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset

from bitsmith.data.datasets import ArrayImageDataset, InputDataset
from bitsmith.inputs.errors import DataSpecError
from bitsmith.inputs.folder import ImageFileDataset

DEFAULT_FRACTIONS = {"calibration": 0.2, "validation": 0.4, "test": 0.4}
MAX_CHECKED = 5000
CHECKED_PAIRS = (("calibration", "validation"), ("calibration", "test"),
                 ("validation", "test"), ("train", "validation"), ("train", "test"))


def apportion(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` into integer counts proportional to ``fractions`` (largest remainders,
    ties to the earlier part); the counts sum to ``n``."""
    total = float(sum(fractions))
    raw = [n * f / total for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_indices(n: int, fractions: Sequence[float], *,
                  labels: Sequence[int] | np.ndarray | None = None,
                  seed: int = 0) -> list[np.ndarray]:
    """Cut ``range(n)`` into ``len(fractions)`` disjoint parts (see the module docstring).

    Args:
        n: number of items.
        fractions: non-negative weights of the parts (normalised to sum to 1).
        labels: class of each item (stratify) or ``None``.
        seed: seed of the shuffles.

    Returns:
        One int64 index array per part, each in a seeded random order.
    """
    if any(f < 0 for f in fractions) or not sum(fractions) > 0:
        raise DataSpecError(f"split fractions {tuple(fractions)} must be >= 0 and not all 0")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
    else:
        lab = np.asarray(labels)
        key = np.empty(n)
        for c in np.unique(lab):  # spread each class evenly over [0, 1): rank + 1/2 / size
            members = rng.permutation(np.nonzero(lab == c)[0])
            key[members] = (np.arange(len(members)) + 0.5) / len(members)
        order = np.lexsort((rng.random(n), key))  # ties between classes broken at random
    parts, start = [], 0
    for count in apportion(n, fractions):
        parts.append(rng.permutation(order[start:start + count]).astype(np.int64))
        start += count
    return parts


def _digest(t: Tensor) -> bytes:
    return hashlib.blake2b(t.detach().contiguous().cpu().numpy().tobytes(),
                           digest_size=16).digest()


def _input_of(item: Any) -> Tensor | None:
    if isinstance(item, Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]
    if isinstance(item, dict) and isinstance(item.get("input"), Tensor):
        return item["input"]
    return None


def _stored_rows(data: Any) -> tuple[Tensor, str] | None:
    """The inputs of an in-memory dataset as one ``(N, ...)`` tensor, and its name."""
    if isinstance(data, ArrayImageDataset):
        return data.images, data.name
    if isinstance(data, InputDataset):
        return data.inputs, data.name
    if isinstance(data, TensorDataset):
        return data.tensors[0], "item"
    if isinstance(data, Subset):
        inner = _stored_rows(data.dataset)
        if inner is not None:
            return inner[0][torch.as_tensor(list(data.indices), dtype=torch.long)], inner[1]
    return None


def fingerprints(data: Any, limit: int = MAX_CHECKED) -> dict[bytes | str, str] | None:
    """``{fingerprint: item description}`` of a dataset (``None``: cannot be seen).

    Path fingerprints are strings (``"path:/abs/file.png"``), content fingerprints bytes.
    """
    if isinstance(data, DataLoader):
        data = data.dataset
    out: dict[bytes | str, str] = {}
    if isinstance(data, ImageFileDataset):
        for p in data.paths:
            out[f"path:{p.resolve()}"] = str(p)
        if data.cached is not None:
            for i, img in enumerate(data.cached.images):
                out.setdefault(_digest(img), str(data.paths[i]))
        return out
    stored = _stored_rows(data)
    rows: Iterator[tuple[int, Tensor]]
    if stored is not None:
        rows, name = enumerate(stored[0]), stored[1]
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
        picks: Sequence[int] = (
            np.unique(np.linspace(0, n - 1, num=min(n, limit)).astype(int)).tolist() if n else [])
        rows = ((int(i), t) for i in picks if (t := _input_of(data[int(i)])) is not None)
        name = getattr(data, "name", type(data).__name__)
    else:
        return None
    for i, t in rows:
        out.setdefault(_digest(t), f"{name} item {i}")
    return out


def check_disjoint(splits: dict[str, Any], sources: dict[str, str] | None = None) -> None:
    """Refuse splits that share items (pairs :data:`CHECKED_PAIRS`; the same object given
    for two roles, e.g. training data reused for calibration, is allowed only as train +
    calibration, which is not checked).

    Raises:
        DataSpecError: naming the two splits, how many items they share and one example.
    """
    sources = sources or {}
    prints = {k: fingerprints(v) for k, v in splits.items() if v is not None}
    for a, b in CHECKED_PAIRS:
        fa, fb = prints.get(a), prints.get(b)
        if not fa or not fb:
            continue
        if splits[a] is splits[b]:
            raise DataSpecError(f"the {a} and {b} data are the same set "
                                f"({sources.get(a, a)}); give disjoint sets")
        shared = [k for k in fa if k in fb]
        if shared:
            ex = shared[0]
            example = f"{fa[ex]} is in both" if isinstance(ex, str) else \
                f"{fa[ex]} has the same content as {fb[ex]}"
            raise DataSpecError(
                f"the {a} data ({sources.get(a, a)}) and the {b} data ({sources.get(b, b)}) "
                f"share {len({fa[k] for k in shared})} item(s): {example}; give disjoint sets "
                f"(scores on {b} data must come from items not used for {a})")


def as_long_labels(data: Any) -> np.ndarray | None:
    """Integer class labels of a dataset bitsmith knows (for stratifying), else ``None``."""
    labels = getattr(data, "labels", None)
    if labels is None and isinstance(data, InputDataset):
        labels = data.targets
    if labels is None and isinstance(data, TensorDataset) and len(data.tensors) > 1:
        labels = data.tensors[1]
    if isinstance(labels, Tensor) and labels.dim() == 1 and not labels.is_floating_point():
        return labels.to(torch.long).numpy()
    return None
