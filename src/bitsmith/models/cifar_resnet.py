"""The CIFAR ResNets of He et al. 2016 (Sec. 4.2) in the akamaster layout.

Module names match the akamaster checkpoints (after stripping ``module.``), so
``load_state_dict(strict=True)`` works. The option-A shortcut is a real module
(:class:`PadShortcut`) and the ReLUs / pooling are separate modules, so
``torch.fx.symbolic_trace`` gives a clean graph with one node per site.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitsmith.data.paths import find_data_file
from bitsmith.models.checkpoint import load_state, read_state_dict, strip_prefixes
from bitsmith.safeload import check_sha256_prefix

PRETRAINED_DIR = "models/akamaster_resnet_cifar10"
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}  # depth -> blocks per stage
SHIPPED_DEPTHS = (20, 32)  # pretrained checkpoints in shared/data


class PadShortcut(nn.Module):
    """Option-A (parameter-free) shortcut: spatial subsampling + zero channel padding.

    ``x[:, :, ::stride, ::stride]`` then ``pad`` zero channels before and after:
    ``(N, C, H, W) -> (N, C + 2*pad, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, stride: int = 2, pad: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3(stride) - BN - ReLU - conv3x3 - BN, + shortcut, ReLU.

    ``(N, in_planes, H, W) -> (N, planes, H/stride, W/stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(stride=stride, pad=planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, 3 stages of ``n`` blocks.

    Input ``(N, 3, 32, 32)`` normalised images -> logits ``(N, num_classes)``.
    Parameter counts (10 classes): 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962 /
    19,421,274 for depth 20 / 32 / 44 / 56 / 110 / 1202.
    """

    def __init__(self, num_blocks: tuple[int, int, int] | list[int], num_classes: int = 10
                 ) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # == F.avg_pool2d over the whole 8x8 map
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """A randomly initialised CIFAR ResNet of the given depth (20, 32, 44, 56, 110, 1202)."""
    if depth not in DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    n = DEPTHS[depth]
    return CifarResNet((n, n, n), num_classes=num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (269,722 parameters with 10 classes)."""
    return cifar_resnet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (464,154 parameters with 10 classes)."""
    return cifar_resnet(32, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (658,586 parameters with 10 classes)."""
    return cifar_resnet(44, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (853,018 parameters with 10 classes)."""
    return cifar_resnet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (1,727,962 parameters with 10 classes)."""
    return cifar_resnet(110, num_classes)


def resnet1202(num_classes: int = 10) -> CifarResNet:
    """ResNet-1202 (19,421,274 parameters with 10 classes)."""
    return cifar_resnet(1202, num_classes)


def load_pretrained_cifar_resnet(depth: int, path: str | Path | None = None,
                                 check_hash: bool = True) -> CifarResNet:
    """The akamaster pretrained CIFAR-10 ResNet, in eval mode on the CPU.

    Args:
        depth: 20 or 32 (the checkpoints included in ``shared/data``).
        path: explicit checkpoint file; default: ``resnet{depth}-*.th`` in
            ``<data root>/models/akamaster_resnet_cifar10`` (see :mod:`bitsmith.data.paths`).
        check_hash: verify the SHA-256 prefix embedded in the file name.

    Expects inputs normalised with mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225);
    top-1 on the 1,000 lossless test images: 91.50% (ResNet-20), 92.80% (ResNet-32).

    Raises:
        FileNotFoundError: no checkpoint found (the message lists where it looked).
        CheckpointError: the file is truncated, modified (SHA-256 prefix of its name), holds
            more than weights, or does not fit the architecture.
    """
    if depth not in DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    if path is None:
        try:
            path = find_data_file(PRETRAINED_DIR, f"resnet{depth}-*.th")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"pretrained ResNet-{depth} checkpoint not found (only resnet20 and resnet32 "
                f"are shipped in shared/data; give another depth's weights as a checkpoint "
                f"file). {e}"
            ) from None
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    what = f"ResNet-{depth} checkpoint"
    if check_hash:
        check_sha256_prefix(path, what, require_letter=False)
    state = strip_prefixes(read_state_dict(path, check_name=False, what=what), set())
    num_classes = state["linear.weight"].shape[0] if "linear.weight" in state else 10
    return load_state(cifar_resnet(depth, num_classes), state, source=str(path),
                      model_name=f"ResNet-{depth}")
