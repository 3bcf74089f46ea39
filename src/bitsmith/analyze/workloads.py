"""Named (model, data) workloads for ``bitsmith analyze``: pretrained CIFAR ResNets and digits.

Each provides the float model and three loaders with the protocol's roles:
``calibration`` (activation ranges), ``val`` (sensitivity and any decision) and
``test`` (reported accuracy only, never used for a decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Subset

from bitsmith.errors import InputError

WORKLOADS = ("resnet20", "resnet32", "digits")


@dataclass
class Workload:
    """A model with its calibration / validation / test loaders and descriptions."""

    name: str
    model: nn.Module
    calibration: Any
    val: Any
    test: Any
    dataset: str
    eval_set: str


def load_workload(name: str, *, val_images: int = 1000, epochs: int = 30, seed: int = 0
                  ) -> Workload:
    """Build a workload by name.

    Args:
        name: ``resnet20`` / ``resnet32`` (pretrained, CIFAR-10 protocol: 512 calibration
            images, the first ``val_images`` JPEG validation images, the 1,000 lossless
            test images) or ``digits`` (SmallCNN trained for ``epochs`` on the sklearn
            digits; calibration on its val split, sensitivity on the first ``val_images``
            of it, 360 test images).

    Raises:
        InputError: unknown name (lists the known ones).
        FileNotFoundError: the CIFAR-10 data or checkpoint is not in the data folder.
    """
    from bitsmith.data import make_loader

    if name in ("resnet20", "resnet32"):
        from bitsmith.data import cifar10_protocol
        from bitsmith.models import load_pretrained_cifar_resnet

        proto = cifar10_protocol(n_calib=512, seed=seed)
        val = Subset(proto.val, range(min(val_images, len(proto.val))))
        return Workload(name, load_pretrained_cifar_resnet(int(name[6:])),
                        make_loader(proto.calibration, batch_size=128),
                        make_loader(val, batch_size=250), make_loader(proto.test, batch_size=250),
                        "CIFAR-10", "1,000 lossless CIFAR-10 test images")
    if name == "digits":
        import torch

        from bitsmith.data import digits_splits
        from bitsmith.engine import fit
        from bitsmith.models import SmallCNN

        torch.manual_seed(seed)
        splits = digits_splits(seed=seed)
        model = SmallCNN()
        fit(model, make_loader(splits.train, batch_size=64, shuffle=True, seed=seed),
            epochs=epochs, lr=3e-3, weight_decay=1e-4)
        calib = make_loader(splits.val, batch_size=128)
        val = make_loader(Subset(splits.val, range(min(val_images, len(splits.val)))),
                          batch_size=128)
        return Workload(name, model, calib, val, make_loader(splits.test, batch_size=256),
                        "sklearn digits", f"{len(splits.test)} digits test images")
    raise InputError(f"unknown workload {name!r}; use one of {WORKLOADS}")
