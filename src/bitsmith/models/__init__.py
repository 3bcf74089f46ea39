"""Models: CIFAR ResNets (akamaster layout, pretrained loader), SmallCNN, a registry.

See ``docs/models_and_data.md``.
"""

from bitsmith.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    cifar_resnet,
    load_pretrained_cifar_resnet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet1202,
)
from bitsmith.models.registry import available_models, build_model, register_model
from bitsmith.models.small_cnn import SmallCNN

__all__ = [
    "BasicBlock", "CifarResNet", "PadShortcut", "SmallCNN", "available_models", "build_model",
    "cifar_resnet", "load_pretrained_cifar_resnet", "register_model", "resnet20", "resnet32",
    "resnet44", "resnet56", "resnet110", "resnet1202",
]
