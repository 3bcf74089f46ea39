"""The scikit-learn 8x8 digits (1,797 images, bundled with scikit-learn, fully offline)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset


@dataclass
class DigitsSplits:
    """Train/val/test splits of the sklearn digits.

    Each split is a ``TensorDataset`` of ``x`` float32 ``(N, 1, 8, 8)`` (pixels scaled
    to [0, 1] by ``/16``, then standardised with ``mean``/``std`` of the *training*
    pixels) and ``y`` int64 ``(N,)`` with labels 0..9. ``indices`` maps each split name
    to the sorted row indices into ``load_digits()`` (disjoint, covering all 1,797).
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    mean: float
    std: float
    seed: int
    indices: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> TensorDataset:
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {k: len(self[k]) for k in ("train", "val", "test")}


def digits_splits(seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.2) -> DigitsSplits:
    """Deterministic, stratified train/val/test split of ``sklearn.datasets.load_digits``.

    Args:
        seed: split seed (same seed -> identical splits).
        val_frac, test_frac: fractions of all 1,797 images for val and test
            (default 60/20/20 -> 1077/360/360).

    Returns:
        :class:`DigitsSplits`.
    """
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"bad fractions val_frac={val_frac}, test_frac={test_frac}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_frac / (1.0 - test_frac),
                                  stratify=y[rest], random_state=seed)
    mean = float(x[train].mean())
    std = float(x[train].std())

    def make(ix: np.ndarray) -> TensorDataset:
        ix = np.sort(ix)
        xt = torch.from_numpy((x[ix] - mean) / std).unsqueeze(1).contiguous()
        return TensorDataset(xt, torch.from_numpy(y[ix]))

    ix = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    return DigitsSplits(make(train), make(val), make(test), mean, std, seed, ix)
