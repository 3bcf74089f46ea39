"""In-memory image datasets, torch-only augmentation and a checked DataLoader factory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

CIFAR10_MEAN = (0.485, 0.456, 0.406)  # the akamaster normalisation (ImageNet statistics)
CIFAR10_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def random_crop_flip(
    x: Tensor,
    pad: int = 4,
    flip: bool = True,
    fill: float | Sequence[float] | Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random crop with padding + random horizontal flip, vectorised over a batch.

    Equivalent to torchvision ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()``
    applied independently to every image, but implemented with plain torch ops so it
    runs on any device.

    Args:
        x: images ``(N, C, H, W)`` or a single image ``(C, H, W)``, any dtype/device.
        pad: zero-padding (in pixels) on every side before the ``H x W`` crop.
        flip: also flip each image left-right with probability 1/2.
        fill: padding value, a scalar or one value per channel. For *normalised*
            images use ``-mean/std`` to mimic padding the raw image with black.
        generator: optional CPU generator for reproducibility.

    Returns:
        A tensor of the same shape, dtype and device as ``x``.
    """
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected (N,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = x.new_empty((n, c, h + 2 * pad, w + 2 * pad))
        f = torch.as_tensor(fill, dtype=x.dtype, device=dev)
        padded[:] = f.reshape(-1, 1, 1) if f.dim() == 1 else f
        padded[:, :, pad:pad + h, pad:pad + w] = x
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    else:
        padded = x
        oy = torch.zeros(n, dtype=torch.long, device=dev)
        ox = torch.zeros(n, dtype=torch.long, device=dev)
    rows = oy[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (N, W)
    if flip:
        do_flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        cols = torch.where(do_flip[:, None], cols.flip(1), cols)
    bi = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (N,H,W,C)
    out = out.permute(0, 3, 1, 2).contiguous()
    return out[0] if single else out


class ArrayImageDataset(Dataset):
    """Images held in memory as ``uint8``; items are normalised float tensors.

    Args:
        images: ``uint8`` array/tensor, ``(N, H, W, C)`` (HWC, e.g. CIFAR), ``(N, H, W)``
            (grayscale, e.g. MNIST) or already ``(N, C, H, W)`` with ``channels_first=True``.
        labels: integer class labels ``(N,)``, or ``None`` for unlabelled images.
        mean, std: per-channel normalisation applied to ``pixels / 255``.
        augment: apply :func:`random_crop_flip` (pad ``pad``, black padding) per item.
        pad: crop padding in pixels when ``augment`` is on.
        flip: with ``augment``, also flip left-right with probability 1/2 (off for digits).
        name: a label used in error messages and ``repr``.

    Items: ``(x, y)`` with ``x`` float32 ``(C, H, W)`` and ``y`` a 0-dim int64 tensor; just
    ``x`` when unlabelled (``labels=None``).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor | Sequence[int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 4,
        channels_first: bool = False,
        name: str = "images",
        flip: bool = True,
    ) -> None:
        imgs = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
        if imgs.dtype != torch.uint8:
            raise TypeError(f"{name}: expected uint8 images, got {imgs.dtype}")
        if imgs.dim() == 3:
            imgs = imgs.unsqueeze(1)
        elif imgs.dim() == 4 and not channels_first:
            imgs = imgs.permute(0, 3, 1, 2)
        elif imgs.dim() != 4:
            raise ValueError(f"{name}: images must be 3-D or 4-D, got {tuple(imgs.shape)}")
        self.images = imgs.contiguous()  # (N, C, H, W) uint8
        self.labels: Tensor | None = None if labels is None else torch.as_tensor(
            np.asarray(labels), dtype=torch.long).reshape(-1)
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(
                f"{name}: {len(self.images)} images but {len(self.labels)} labels"
            )
        c = self.images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"{name}: mean/std need {c} values, got {len(mean)}/{len(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(c, 1, 1)
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.name = name

    @property
    def labelled(self) -> bool:
        """Whether items carry labels."""
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | Tensor:
        img = self.images[i]
        if self.augment:
            img = random_crop_flip(img, pad=self.pad, flip=self.flip)
        x = (img.float().div_(255.0) - self.mean) / self.std
        return x if self.labels is None else (x, self.labels[i])

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """Normalise a ``uint8`` batch ``(N, C, H, W)`` -> float32 ``(N, C, H, W)``."""
        return (images_uint8.float() / 255.0 - self.mean) / self.std

    def tensors(self, indices: Sequence[int] | Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """The whole (or an indexed part of the) dataset as one batch, *without* augmentation.

        Returns:
            ``(x, y)``: float32 ``(N, C, H, W)`` normalised images and int64 ``(N,)`` labels
            (``None`` when unlabelled).
        """
        if indices is None:
            labels = None if self.labels is None else self.labels.clone()
            return self.normalize(self.images), labels
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.normalize(self.images[idx]), None if self.labels is None else self.labels[idx]

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor,
               augment: bool | None = None, name: str | None = None) -> ArrayImageDataset:
        """A new dataset with the given rows (shares no mutable state with this one)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayImageDataset(
            self.images[idx], None if self.labels is None else self.labels[idx],
            self.mean.flatten().tolist(),
            self.std.flatten().tolist(), augment=self.augment if augment is None else augment,
            pad=self.pad, channels_first=True, name=name or self.name, flip=self.flip,
        )

    def class_counts(self, num_classes: int | None = None) -> list[int]:
        """Number of items per class."""
        if self.labels is None:
            raise ValueError(f"{self.name}: unlabelled images have no classes")
        return torch.bincount(self.labels, minlength=num_classes or 0).tolist()

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ArrayImageDataset({self.name!r}, n={len(self)}, shape=({c},{h},{w}), "
                f"augment={self.augment})")


def concat_datasets(parts: Sequence[ArrayImageDataset], augment: bool | None = None,
                    name: str = "concat") -> ArrayImageDataset:
    """Concatenate datasets with identical normalisation into one in-memory dataset."""
    if not parts:
        raise ValueError("concat_datasets: nothing to concatenate")
    p0 = parts[0]
    for p in parts[1:]:
        if not (torch.equal(p.mean, p0.mean) and torch.equal(p.std, p0.std)):
            raise ValueError("concat_datasets: datasets use different normalisations")
        if p.labelled != p0.labelled:
            raise ValueError("concat_datasets: cannot mix labelled and unlabelled datasets")
    labels = (torch.cat([p.labels for p in parts if p.labels is not None])
              if p0.labels is not None else None)
    return ArrayImageDataset(
        torch.cat([p.images for p in parts]), labels,
        p0.mean.flatten().tolist(), p0.std.flatten().tolist(),
        augment=p0.augment if augment is None else augment, pad=p0.pad,
        channels_first=True, name=name, flip=p0.flip,
    )


class InputDataset(Dataset):
    """Model-ready tensors held in memory: items ``inputs[i]``, or ``(inputs[i], targets[i])``.

    Args:
        inputs: ``(N, ...)`` tensor, any dtype (float inputs are used as they are).
        targets: optional ``(N, ...)`` tensor (int64 ``(N,)`` class labels for top-1).
        name: a label used in error messages and ``repr``.
    """

    def __init__(self, inputs: Tensor, targets: Tensor | None = None, name: str = "tensors"
                 ) -> None:
        if targets is not None and len(targets) != len(inputs):
            raise ValueError(f"{name}: {len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets, self.name = inputs, targets, name

    @property
    def labelled(self) -> bool:
        """Whether items carry targets."""
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | Tensor:
        return self.inputs[i] if self.targets is None else (self.inputs[i], self.targets[i])

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor, name: str | None = None
               ) -> InputDataset:
        """A new dataset with the given rows."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return InputDataset(self.inputs[idx], None if self.targets is None else
                            self.targets[idx], name=name or self.name)

    def __repr__(self) -> str:
        return (f"InputDataset({self.name!r}, n={len(self)}, "
                f"shape={tuple(self.inputs.shape[1:])}, labelled={self.labelled})")


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    **kw: object,
) -> DataLoader:
    """A ``DataLoader`` that refuses empty datasets / zero-batch configurations.

    Args:
        dataset: any map-style dataset with ``__len__``.
        batch_size: images per batch.
        shuffle: reshuffle each epoch (deterministic when ``seed`` is given).
        num_workers: worker processes (0 = load in the main process).
        drop_last: drop the last incomplete batch.
        seed: seed for the shuffling generator.
        **kw: passed to ``DataLoader``.

    Raises:
        ValueError: if the dataset is empty, or ``drop_last`` would leave no batch.
    """
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("make_loader needs a dataset with __len__") from None
    if n == 0:
        raise ValueError(
            f"make_loader: the dataset {dataset!r} is empty (0 items); check the data split "
            "sizes and that the data files were found"
        )
    if batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be >= 1, got {batch_size}")
    if drop_last and n < batch_size:
        raise ValueError(
            f"make_loader: drop_last=True with {n} items and batch_size={batch_size} "
            "gives no batch at all"
        )
    gen = None
    if seed is not None:
        gen = torch.Generator()
        gen.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, generator=gen, **kw)  # type: ignore[arg-type]
