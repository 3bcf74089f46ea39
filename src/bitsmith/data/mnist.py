"""MNIST from the IDX files in ``<data>/mnist`` (parsed with gzip + numpy, no torchvision)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bitsmith.data.datasets import MNIST_MEAN, MNIST_STD, ArrayImageDataset
from bitsmith.data.paths import data_file

IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim

_IDX_DTYPES = {code: np.dtype(name) for code, name in
               {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.items()}

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzip-compressed if the name ends in ``.gz``).

    Format: a big-endian int32 magic ``0x0000TTDD`` (``TT`` the element type, ``DD`` the
    number of dimensions), ``DD`` big-endian int32 sizes, then the data row-major.

    Args:
        path: the ``.idx*`` or ``.gz`` file.
        expected_magic: e.g. :data:`IDX_IMAGES_MAGIC` (2051) or :data:`IDX_LABELS_MAGIC` (2049).

    Returns:
        The array, e.g. uint8 ``(N, 28, 28)`` for images or ``(N,)`` for labels.

    Raises:
        ValueError: bad magic number, unknown type code or truncated data (message names the file).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path}: bad IDX magic number {magic} (0x{magic:08x}), expected {expected_magic} "
            f"(0x{expected_magic:08x}); the file is corrupt or not the file you meant"
        )
    zero, tcode, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or tcode not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number {magic} (0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[tcode]
    n = int(np.prod(dims)) if dims else 0
    need = header + n * dtype.itemsize
    if len(raw) != need:
        raise ValueError(
            f"{path}: IDX header says {dims} ({need} bytes in all) but the file has "
            f"{len(raw)} bytes (truncated or corrupt)"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_mnist_arrays(split: str = "train", root: str | Path | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST arrays: uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: folder with the four ``*-ubyte.gz`` files; default ``<data root>/mnist``.
    """
    if split not in _FILES:
        raise ValueError(f"unknown MNIST split {split!r}; use 'train' or 'test'")
    fi, fl = _FILES[split]
    if root is None:
        pi, pl = data_file(f"mnist/{fi}"), data_file(f"mnist/{fl}")
    else:
        pi, pl = Path(root) / fi, Path(root) / fl
        for p in (pi, pl):
            if not p.exists():
                raise FileNotFoundError(f"MNIST file not found: {p}")
    images = read_idx(pi, IDX_IMAGES_MAGIC)
    labels = read_idx(pl, IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def mnist(split: str = "train", root: str | Path | None = None,
          augment: bool = False) -> ArrayImageDataset:
    """MNIST as a dataset of float32 ``(1, 28, 28)`` images normalised with 0.1307/0.3081.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: folder with the IDX ``.gz`` files; default ``<data root>/mnist``.
        augment: random crop (pad 2) per item, no flips (digits are not mirror-symmetric).
    """
    images, labels = load_mnist_arrays(split, root)
    return ArrayImageDataset(images, labels, MNIST_MEAN, MNIST_STD, augment=augment, pad=2,
                             flip=False, name=f"mnist-{split}")
