"""Thin wrapper around ``torchvision.datasets`` for users with internet access.

Never used by the tests or the offline benchmarks (which read ``shared/data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bitsmith.data.datasets import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD

_NORMS = {
    "CIFAR10": (CIFAR10_MEAN, CIFAR10_STD),
    "MNIST": (MNIST_MEAN, MNIST_STD),
    "FashionMNIST": ((0.2860,), (0.3530,)),
    "CIFAR100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def torchvision_dataset(name: str, root: str | Path, train: bool = True,
                        download: bool = True, transform: Any = None, **kw: Any) -> Any:
    """``torchvision.datasets.<name>(root, train=..., download=..., transform=...)``.

    Args:
        name: a torchvision dataset class name, e.g. ``"CIFAR10"`` or ``"MNIST"``.
        root: download / cache folder.
        train: training or test split (``train=`` or ``split="train"/"test"``, whichever
            the dataset class takes).
        download: download if missing (needs internet).
        transform: default ``ToTensor()`` + ``Normalize`` with the statistics bitsmith uses
            for ``CIFAR10`` (akamaster), ``MNIST`` and a few others; ``ToTensor()`` otherwise.
        **kw: passed through to the dataset class.

    Raises:
        ImportError: torchvision is not installed (``pip install bitsmith[vision]``).
        KeyError: unknown dataset name.
    """
    try:
        import torchvision.datasets as tvd
        import torchvision.transforms as T
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "torchvision_dataset needs torchvision: pip install 'bitsmith[vision]'"
        ) from e
    cls = getattr(tvd, name, None)
    if cls is None:
        raise KeyError(f"torchvision.datasets has no dataset {name!r}")
    if transform is None:
        steps: list[Any] = [T.ToTensor()]
        if name in _NORMS:
            steps.append(T.Normalize(*_NORMS[name]))
        transform = T.Compose(steps)
    import inspect

    params = inspect.signature(cls).parameters
    if "train" in params:
        kw.setdefault("train", train)
    elif "split" in params and "split" not in kw:
        kw["split"] = "train" if train else "test"
    return cls(str(root), download=download, transform=transform, **kw)
