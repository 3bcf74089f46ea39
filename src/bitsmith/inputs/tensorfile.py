"""Data from a tensors file: ``.npz`` (numpy, ``allow_pickle=False``) or ``.safetensors``.

Arrays: ``x`` (the inputs, ``N`` first) and optionally ``y`` (targets; int64 ``(N,)`` class
labels for top-1; without ``y`` the data is unlabelled). ``images`` / ``labels`` are
accepted as the same pair (the layout of the CIFAR-10 ``.npz`` files in ``shared/data``).

* float (or integer, e.g. token ids) ``x`` is model-ready and used as it is;
* uint8 ``x`` is taken as images: ``(N, H, W)`` grayscale, ``(N, C, H, W)`` when
  ``x.shape[1]`` is 1 or 3, else ``(N, H, W, C)``; normalised as
  ``(pixels / 255 - mean) / std`` with the image options (preset, mean, std).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bitsmith.data.datasets import ArrayImageDataset, InputDataset
from bitsmith.errors import one_line
from bitsmith.inputs.errors import DataSpecError
from bitsmith.inputs.folder import ImageTransform
from bitsmith.safeload import read_safetensors

TENSOR_SUFFIXES = (".npz", ".safetensors")
KEY_PAIRS = (("x", "y"), ("images", "labels"))


def _read_arrays(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path, what="data file", error=DataSpecError)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise DataSpecError(f"data file {str(path)!r} holds pickled objects, which are "
                                "never loaded; save plain numeric arrays (np.savez)") from err
        raise DataSpecError(f"data file {str(path)!r} cannot be read ({one_line(err)}); "
                            "the file is truncated or corrupt") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataSpecError(f"data file {str(path)!r} cannot be read ({one_line(err)}); "
                            "the file is truncated or corrupt") from err


def _images_nchw(x: Tensor) -> Tensor:
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
        return x.permute(0, 3, 1, 2)
    return x


def tensor_file_dataset(path: str | Path, transform: ImageTransform | None = None
                        ) -> ArrayImageDataset | InputDataset:
    """Load a tensors file as a dataset (see the module docstring).

    Args:
        path: ``.npz`` or ``.safetensors``.
        transform: normalisation of uint8 images (its size and resize are not applied:
            the arrays keep their shape); ``None``: ``pixels / 255``.

    Raises:
        DataSpecError: missing or unreadable file, no ``x`` array, empty, ``y`` of another
            length, or normalisation options for float inputs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataSpecError(f"data file {str(path)!r} not found; check the path")
    arrays = _read_arrays(path)
    for xk, yk in KEY_PAIRS:
        if xk in arrays:
            x, y = arrays[xk], arrays.get(yk)
            break
    else:
        have = ", ".join(sorted(arrays)) or "nothing"
        raise DataSpecError(f"data file {str(path)!r} has no array 'x' (it has: {have}); save "
                            "the inputs as x and the labels (optional) as y")
    if x.dim() == 0 or len(x) == 0:
        raise DataSpecError(f"data file {str(path)!r}: x holds no items; save at least one")
    if y is not None and (y.dim() == 0 or len(y) != len(x)):
        raise DataSpecError(f"data file {str(path)!r}: x has {len(x)} items but y has "
                            f"{1 if y.dim() == 0 else len(y)}; give one target per input")
    if y is not None and not y.is_floating_point() and y.dim() == 1:
        y = y.long()
    name = str(path)
    if x.dtype == torch.uint8:
        images = _images_nchw(x)
        t = transform or ImageTransform(channels=images.shape[1],
                                        mean=(0.0,) * images.shape[1],
                                        std=(1.0,) * images.shape[1])
        if images.dim() != 4 or len(t.mean) != images.shape[1]:
            raise DataSpecError(f"data file {str(path)!r}: uint8 images of shape "
                                f"{tuple(x.shape)} do not match a {len(t.mean)}-channel mean/std"
                                "; give a mean and std per channel")
        return ArrayImageDataset(images, y, t.mean, t.std, channels_first=True, name=name)
    if transform is not None and (any(transform.mean) or any(s != 1 for s in transform.std)):
        raise DataSpecError(f"data file {str(path)!r}: x is {x.dtype} (model-ready inputs); "
                            "mean/std/preset apply to uint8 images only, normalise x yourself")
    return InputDataset(x, y, name=name)
