"""Shared fixtures: tiny models and data, seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine's cores).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """conv-bn-relu, depthwise conv, pointwise conv, linear: the foldable patterns; traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.pw(self.dw(x))))
        return self.fc(x.mean((2, 3)))


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so folding is really tested."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def tiny_net() -> nn.Module:
    return randomize_bn(TinyNet())


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16)


def tune_problem(n: int = 96) -> tuple[nn.Module, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """TinyNet with BN statistics, random images (n, 3, 8, 8); returns the model, the first 48
    images as calibration data and (images, labels = the float model's predictions)."""
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    x = torch.randn(n, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x[:48], (x, y)


def random_tensors_file(folder, n: int = 320, channels: int = 1, size: int = 16) -> str:
    """A ``.npz`` tensors file of ``n`` random ``(channels, size, size)`` inputs with 10-class
    labels (``bitsmith --data FILE`` splits it by the rule): data for CLI tests."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = folder / "random.npz"
    np.savez(path, x=rng.standard_normal((n, channels, size, size)).astype(np.float32),
             y=rng.integers(0, 10, n).astype(np.int64))
    return str(path)
