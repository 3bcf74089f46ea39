"""A CIFAR-10 ResNet written the way a user writes their own model: plain PyTorch, no
bitsmith import. It follows He et al. 2016, Sec. 4.2 (and the layout of the akamaster
checkpoints): 3x3 stem, three stages of basic blocks with 16/32/64 channels, parameter-free
"option A" shortcuts (stride-2 subsampling plus zero channels), global average pooling and a
linear classifier. ``build(depth=32)`` is the factory the command line names:

    bitsmith tune --model benchmarks/user_model/resnet_cifar.py:build --checkpoint resnet32.th
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel, pad ``extra`` zero channels each side."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra, self.extra))


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (ZeroPadShortcut(cout // 4) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 RGB images; ``depth`` 20, 32, 44, 56, 110."""

    def __init__(self, depth: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        blocks = [Block(cin, cout, stride)] + [Block(cout, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def build(depth: int = 32, num_classes: int = 10) -> nn.Module:
    """The model the checkpoint's weights go into."""
    return CifarResNet(depth, num_classes)
