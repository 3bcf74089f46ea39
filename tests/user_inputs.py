"""What a user brings, built in a temporary folder: a model file that is not part of bitsmith,
and an ImageFolder of generated PNGs. Shared by the input-resolver and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

USER_MODEL = '''
import torch
from torch import nn


class UserNet(nn.Module):
    """A small CNN that is not part of bitsmith."""

    def __init__(self, channels=3, num_classes=4, width=6):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(x.mean((2, 3)))


def build(channels=3, num_classes=4, width=6):
    return UserNet(channels, num_classes, width).train()


def broken(**kw):
    return {}["missing"]


def not_a_model():
    return 42
'''

CLASSES = ("circle", "square", "triangle")


def write_user_model(folder: Path, name: str = "user_net.py") -> Path:
    """Write :data:`USER_MODEL` to ``folder/name``; returns the file (spec: ``FILE:build``)."""
    path = folder / name
    path.write_text(USER_MODEL)
    return path


def make_image_folder(root: Path, per_class: int = 10, size: int = 12, mode: str = "RGB",
                      classes: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """Generated PNGs in ImageFolder layout (``root/<class>/NNN.png``), every image
    different; pixel values depend on the class so a model can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            arr[..., :2] = c * 80 + i  # class-dependent and unique
            Image.fromarray(arr, mode).save(root / name / f"{i:03d}.png")
    return root
