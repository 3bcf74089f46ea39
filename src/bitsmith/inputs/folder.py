"""Image folders in torchvision's ``ImageFolder`` layout, read with Pillow (no torchvision).

Layouts (``docs/inputs.md``):

* **labelled**: ``root/<class>/<image>`` (images may sit deeper inside a class folder);
  classes are the sorted folder names, label ``i`` = the ``i``-th class;
* **unlabelled**: ``root/<image>`` with no class folders (calibration, or validation with a
  metric function that needs no labels);
* **split folders**: ``root/train|calibration``, ``root/val|validation``, ``root/test``, each
  in one of the two layouts above (:func:`split_folders`).

Hidden files and folders (``.name``) are ignored; a class folder without images, or loose
images beside class folders, are errors (they would shift the labels silently).

Every image is converted to ``L`` (1 channel) or ``RGB`` (3), resized (shorter side to
``resize`` then a centre crop to ``size``, or straight to ``size``), then normalised:
``(pixels / 255 - mean) / std``. Folders whose decoded images fit in memory
(:data:`MAX_CACHE_BYTES`) are decoded once, up front, so unreadable files are reported
before any work starts; larger ones are decoded per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bitsmith.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    ArrayImageDataset,
)
from bitsmith.errors import one_line
from bitsmith.inputs.errors import DataSpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif",
                  ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_CACHE_BYTES = 512 * 2**20
SPLIT_FOLDERS = {"train": "calibration", "training": "calibration",
                 "calibration": "calibration", "calib": "calibration", "val": "validation",
                 "valid": "validation", "validation": "validation", "test": "test",
                 "testing": "test"}
_LAYOUT_HINT = "arrange it as FOLDER/<class name>/<image> (torchvision ImageFolder layout)"


@dataclass(frozen=True)
class ImageTransform:
    """How image files become model inputs.

    Attributes:
        size: final ``(height, width)``; ``None`` keeps the files' own size (they must agree).
        resize: resize the shorter side to this many pixels, then centre-crop to ``size``;
            ``None`` resizes straight to ``size``.
        channels: 1 (grayscale, ``L``) or 3 (``RGB``).
        mean, std: per-channel normalisation of ``pixels / 255``.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def describe(self) -> str:
        size = "own size" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        crop = "" if self.resize is None else f" (shorter side {self.resize}, centre crop)"
        mode = "RGB" if self.channels == 3 else "grayscale"
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"{size}{crop} {mode}, mean ({mean}) std ({std})"


PRESETS: dict[str, ImageTransform] = {
    "cifar10": ImageTransform((32, 32), None, 3, CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": ImageTransform((224, 224), 256, 3, IMAGENET_MEAN, IMAGENET_STD),
    "mnist": ImageTransform((28, 28), None, 1, MNIST_MEAN, MNIST_STD),
}


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> tuple[float, ...]:
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(map(float, values))
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise DataSpecError(f"{what}: {len(vals)} values for {channels} channel(s); give one "
                            f"value or {channels}")
    return vals


def image_transform(preset: str | None = None, *, size: int | Sequence[int] | None = None,
                    resize: int | None = None, channels: int | None = None,
                    mean: Sequence[float] | float | None = None,
                    std: Sequence[float] | float | None = None) -> ImageTransform:
    """An :class:`ImageTransform` from a named preset (``cifar10``, ``imagenet``, ``mnist``)
    with any field overridden; without a preset: own size, RGB, no normalisation.

    Raises:
        DataSpecError: unknown preset, bad size, channel count or mean/std length, std <= 0.
    """
    if preset is not None and preset not in PRESETS:
        raise DataSpecError(f"unknown image preset {preset!r}; use one of {sorted(PRESETS)}")
    base = PRESETS[preset] if preset is not None else ImageTransform()
    changes: dict[str, object] = {}
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(map(int, size))
        if len(hw) != 2 or min(hw) < 1:
            raise DataSpecError(f"image size {size!r}: give one positive size or (height, "
                                "width)")
        changes["size"] = hw
    if resize is not None:
        if int(resize) < 1:
            raise DataSpecError(f"image resize {resize!r} must be a positive pixel count")
        changes["resize"] = int(resize)
    if channels is not None:
        if channels not in (1, 3):
            raise DataSpecError(f"image channels {channels!r}: use 1 (grayscale) or 3 (RGB)")
        changes["channels"] = int(channels)
    c = int(channels) if channels is not None else base.channels
    for key, given, neutral in (("mean", mean, 0.0), ("std", std, 1.0)):
        default: tuple[float, ...] = getattr(base, key)
        if given is not None:
            changes[key] = _per_channel(given, c, f"image {key}")
        elif len(default) != c:
            if preset is not None:
                raise DataSpecError(f"image preset {preset!r} has a {len(default)}-channel "
                                    f"{key}, but {c} channel(s) were asked; give the {key} too")
            changes[key] = (neutral,) * c
    std_values: tuple[float, ...] = changes.get("std", base.std)  # type: ignore[assignment]
    if min(std_values) <= 0:
        raise DataSpecError(f"image std {std_values} must be positive")
    out = replace(base, **changes)  # type: ignore[arg-type]
    if out.resize is not None and out.size is None:
        raise DataSpecError("image resize needs a crop size too (--image-size)")
    return out


@dataclass(frozen=True)
class FolderScan:
    """The files of an image folder: sorted paths, labels (``None``: unlabelled), classes."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...] = field(default=())

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def _visible(p: Path | str) -> bool:
    return not Path(p).name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and
                  p.suffix.lower() in IMAGE_SUFFIXES and
                  all(_visible(q) for q in p.relative_to(folder).parts[:-1]) and _visible(p))


def split_folders(root: str | Path) -> dict[str, Path] | None:
    """``{"calibration"|"validation"|"test": folder}`` when every visible sub-folder of
    ``root`` is a split name (train/calibration, val/validation, test, ...), else ``None``."""
    root = Path(root)
    subs = [p for p in root.iterdir() if p.is_dir() and _visible(p)] if root.is_dir() else []
    if not subs or any(p.name.lower() not in SPLIT_FOLDERS for p in subs):
        return None
    out: dict[str, Path] = {}
    for p in sorted(subs):
        role = SPLIT_FOLDERS[p.name.lower()]
        if role in out:
            raise DataSpecError(f"image folder {str(root)!r} has two {role} folders "
                                f"({out[role].name}, {p.name}); keep one")
        out[role] = p
    return out


def scan_image_folder(root: str | Path) -> FolderScan:
    """List an image folder (labelled or unlabelled layout, see the module docstring).

    Raises:
        DataSpecError: missing folder, no images, an empty class folder, or loose images
            beside class folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataSpecError(f"image folder {str(root)!r} not found; check the path")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    loose = sorted(p for p in root.iterdir() if p.is_file() and _visible(p)
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    per_class = {d.name: _images_under(d) for d in class_dirs}
    if not loose and not any(per_class.values()):
        raise DataSpecError(f"image folder {str(root)!r} holds no images (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)}); {_LAYOUT_HINT}")
    if loose and any(per_class.values()):
        raise DataSpecError(f"image folder {str(root)!r} has class folders and loose images "
                            f"beside them (e.g. {loose[0].name}); move every image into its "
                            "class folder")
    if loose:
        return FolderScan(root, tuple(loose), None, ())
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise DataSpecError(f"image folder {str(root)!r}: class folder(s) {', '.join(empty)} "
                            "hold no images; remove them or add their images (an empty class "
                            "would shift every later label)")
    classes = tuple(per_class)
    paths = [p for name in classes for p in per_class[name]]
    labels = [i for i, name in enumerate(classes) for _ in per_class[name]]
    return FolderScan(root, tuple(paths), tuple(labels), classes)


def decode_image(path: Path, transform: ImageTransform) -> np.ndarray:
    """One image file as uint8 ``(H, W, C)`` after mode conversion, resize and crop.

    Raises:
        DataSpecError: the file cannot be decoded (names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if transform.channels == 3 else "L")
            if transform.size is not None:
                h, w = transform.size
                if transform.resize is not None:
                    scale = transform.resize / min(im.size)
                    im = im.resize((max(w, round(im.size[0] * scale)),
                                    max(h, round(im.size[1] * scale))),
                                   Image.Resampling.BILINEAR)
                    left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
                    im = im.crop((left, top, left + w, top + h))
                elif im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataSpecError(f"image {str(path)!r} cannot be read ({one_line(err)}); replace or "
                            "remove the file") from err
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageFileDataset(Dataset):
    """Images read from files; items ``(x, y)`` (``x`` float32 ``(C, H, W)``) or ``x``.

    Decoded once into an :class:`ArrayImageDataset` when they fit in ``max_cache_bytes``
    (errors then surface here, up front), else decoded per item.

    Attributes:
        paths: the files, one per item; ``labels``: int labels or ``None``.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | None,
                 transform: ImageTransform, *, name: str = "images",
                 max_cache_bytes: int = MAX_CACHE_BYTES) -> None:
        if not paths:
            raise DataSpecError(f"{name}: no images")
        self.paths = tuple(paths)
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
        self.transform, self.name = transform, name
        first = decode_image(self.paths[0], transform)
        self.shape = first.shape  # (H, W, C) of every item
        self._mean = torch.tensor(transform.mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._std = torch.tensor(transform.std, dtype=torch.float32).reshape(-1, 1, 1)
        self.cached: ArrayImageDataset | None = None
        if len(self.paths) * first.nbytes <= max_cache_bytes:
            images = np.empty((len(self.paths), *first.shape), dtype=np.uint8)
            images[0] = first
            for i in range(1, len(self.paths)):
                images[i] = self._decode(i)
            self.cached = ArrayImageDataset(images, self.labels, transform.mean, transform.std,
                                            name=name)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def _decode(self, i: int) -> np.ndarray:
        arr = decode_image(self.paths[i], self.transform)
        if arr.shape != self.shape:
            raise DataSpecError(
                f"image {str(self.paths[i])!r} is {arr.shape[1]}x{arr.shape[0]} but "
                f"{self.paths[0].name} is {self.shape[1]}x{self.shape[0]}; give one input size "
                "(--image-size or --preset)")
        return arr

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | Tensor:
        if self.cached is not None:
            return self.cached[i]
        img = torch.from_numpy(self._decode(i)).permute(2, 0, 1)
        x = (img.float().div_(255.0) - self._mean) / self._std
        return x if self.labels is None else (x, self.labels[i])

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None
               ) -> ImageFileDataset:
        """The given items (decoded images are shared, not re-read)."""
        idx = [int(i) for i in indices]
        out = ImageFileDataset.__new__(ImageFileDataset)
        out.paths = tuple(self.paths[i] for i in idx)
        out.labels = None if self.labels is None else self.labels[idx]
        out.transform, out.name, out.shape = self.transform, name or self.name, self.shape
        out._mean, out._std = self._mean, self._std
        out.cached = None if self.cached is None else self.cached.subset(idx, name=out.name)
        return out

    def __repr__(self) -> str:
        h, w, c = self.shape
        return (f"ImageFileDataset({self.name!r}, n={len(self)}, shape=({c},{h},{w}), "
                f"labelled={self.labelled})")


def image_folder_dataset(root: str | Path, transform: ImageTransform, *,
                         max_cache_bytes: int = MAX_CACHE_BYTES
                         ) -> tuple[ImageFileDataset, FolderScan]:
    """Scan and load an image folder (one split; see :func:`split_folders` for several)."""
    scan = scan_image_folder(root)
    ds = ImageFileDataset(scan.paths, scan.labels, transform, name=str(scan.root),
                          max_cache_bytes=max_cache_bytes)
    return ds, scan
