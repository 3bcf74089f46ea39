"""Model registry: ``build_model(name, **kw)`` / ``available_models()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bitsmith.models.cifar_resnet import DEPTHS, cifar_resnet, load_pretrained_cifar_resnet
from bitsmith.models.hf import hf_bert, hf_gpt2
from bitsmith.models.small_cnn import SmallCNN

TV_PREFIX = "torchvision:"
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(**kw) -> nn.Module`` under ``name``."""
    if name.startswith(TV_PREFIX):
        raise ValueError(f"names starting with {TV_PREFIX!r} are reserved")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"a model named {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return deco


def _resnet_builder(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, pretrained: bool = False, path: str | None = None
              ) -> nn.Module:
        if pretrained:
            if num_classes != 10:
                raise ValueError("pretrained CIFAR ResNets have 10 classes")
            return load_pretrained_cifar_resnet(depth, path=path)
        return cifar_resnet(depth, num_classes)

    build.__doc__ = (f"ResNet-{depth} for CIFAR-10/100 (``pretrained=True`` loads the akamaster "
                     "checkpoint from shared/data; only depths 20 and 32 are shipped).")
    return build


for _d in DEPTHS:
    register_model(f"resnet{_d}")(_resnet_builder(_d))
register_model("small_cnn")(SmallCNN)
register_model("hf_bert")(hf_bert)  # optional dependency: transformers
register_model("hf_gpt2")(hf_gpt2)


def _torchvision_names() -> list[str]:
    try:
        import torchvision.models as tvm
    except ImportError:
        return []
    return sorted(tvm.list_models())


def available_models(include_torchvision: bool = True) -> list[str]:
    """Registered model names, plus ``"torchvision:<name>"`` for every torchvision
    classification/detection/... model when torchvision is importable."""
    names = sorted(_BUILDERS)
    if include_torchvision:
        names += [TV_PREFIX + n for n in _torchvision_names()]
    return names


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build a model by name.

    Args:
        name: ``resnet20`` / ``resnet32`` / ``resnet44`` / ``resnet56`` / ``resnet110`` /
            ``resnet1202`` (kw: ``num_classes``, ``pretrained``, ``path``), ``small_cnn``
            (kw: ``in_channels``, ``num_classes``, ``width``), or ``torchvision:<name>``
            (random weights, ``weights=None``; other kw passed to
            ``torchvision.models.get_model``).

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        ImportError: a ``torchvision:`` name without torchvision installed.
    """
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX):]
        try:
            import torchvision.models as tvm
        except ImportError as e:
            raise ImportError(
                f"{name!r} needs torchvision: pip install 'bitsmith[vision]'"
            ) from e
        if tv_name not in tvm.list_models():
            raise KeyError(f"torchvision has no model {tv_name!r}")
        kw.setdefault("weights", None)
        return tvm.get_model(tv_name, **kw)
    if name not in _BUILDERS:
        raise KeyError(
            f"unknown model {name!r}; available: {', '.join(sorted(_BUILDERS))} "
            f"or '{TV_PREFIX}<torchvision model name>'"
        )
    return _BUILDERS[name](**kw)
