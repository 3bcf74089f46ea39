"""One model resolver for the command line and the Python API: :func:`resolve_model`.

Model specs (``docs/inputs.md``):

=================================  =============================================================
``resnet20`` ... ``resnet1202``,   a registered name (:func:`bitsmith.models.available_models`);
``small_cnn``                      ``pretrained=True`` loads a shipped checkpoint (ResNet-20/32)
``torchvision:NAME``               ``torchvision.models.get_model(NAME, weights=None, **kwargs)``
``path/to/file.py:build``          a factory in a Python file, called as ``build(**kwargs)``
``package.module:build``           a factory in an importable module
an ``nn.Module`` or a callable     used as is / called with the keyword arguments (Python API)
=================================  =============================================================

Keyword arguments come from a mapping, a YAML/JSON file, inline YAML or ``k=v`` pairs
(:func:`bitsmith.inputs.specs.load_mapping`). A checkpoint (:mod:`bitsmith.models.checkpoint`)
is loaded strictly. The model comes back in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bitsmith.inputs.errors import ModelSpecError
from bitsmith.inputs.specs import (
    call_user,
    describe_exception,
    load_callable,
    load_mapping,
    split_callable_spec,
)
from bitsmith.models.checkpoint import load_checkpoint
from bitsmith.models.registry import TV_PREFIX, available_models, build_model

ModelSpec = str | nn.Module | Callable[..., nn.Module]


def describe_model(spec: ModelSpec, checkpoint: str | Path | None = None) -> str:
    """How the model was given, for reports: ``"net.py:build + checkpoint ck.pt"``."""
    if isinstance(spec, nn.Module):
        text = f"{type(spec).__name__} instance"
    elif isinstance(spec, str):
        text = spec
    else:
        text = getattr(spec, "__qualname__", type(spec).__name__)
    return text if checkpoint is None else f"{text} + checkpoint {Path(checkpoint).name}"


def _forms() -> str:
    names = ", ".join(available_models(include_torchvision=False))
    return (f"use a registered name ({names}), {TV_PREFIX}NAME, path/to/file.py:function "
            "or package.module:function")


def _build_registered(spec: str, kwargs: dict[str, Any], pretrained: bool,
                      with_checkpoint: bool) -> nn.Module:
    if pretrained:
        if with_checkpoint:
            raise ModelSpecError(f"model {spec!r}: give either pretrained weights or a "
                                 "checkpoint file, not both")
        kwargs = {**kwargs, "pretrained": True}
    try:
        return call_user(build_model, spec, what=f"model {spec!r}", error=ModelSpecError,
                         fix="check the model's keyword arguments", **kwargs)
    except ModelSpecError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise ModelSpecError(
                f"model {spec!r}: no pretrained weights are shipped for it (only resnet20 and "
                "resnet32 are); give its weights as a checkpoint file (--checkpoint PATH)"
            ) from err
        raise


def _build_torchvision(spec: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    if pretrained or kwargs.get("weights") not in (None, "None"):
        raise ModelSpecError(
            f"model {spec!r}: bitsmith never downloads weights; build it with weights=None "
            "and give the weights as a checkpoint file (--checkpoint PATH)")
    try:
        return build_model(spec, **kwargs)
    except ImportError as err:
        raise ModelSpecError(f"model {spec!r} needs torchvision: pip install "
                             "'bitsmith[vision]'") from err
    except KeyError as err:
        raise ModelSpecError(f"model {spec!r}: torchvision has no such model; see "
                             "torchvision.models.list_models()") from err
    except Exception as err:
        raise ModelSpecError(f"model {spec!r} raised {describe_exception(err)}; check the "
                             "model's keyword arguments") from err


def _from_string(spec: str, kwargs: dict[str, Any], pretrained: bool,
                 with_checkpoint: bool) -> Any:
    if spec.startswith(TV_PREFIX):
        return _build_torchvision(spec, kwargs, pretrained)
    if spec in available_models(include_torchvision=False):
        return _build_registered(spec, kwargs, pretrained, with_checkpoint)
    what = f"model {spec!r}"
    if split_callable_spec(spec) is not None:
        if pretrained:
            raise ModelSpecError(f"{what}: 'pretrained' applies to registered names only; "
                                 "give the weights as a checkpoint file (--checkpoint PATH)")
        fn, path = load_callable(spec, what=what, error=ModelSpecError)
        return call_user(fn, what=f"model factory {spec!r}", error=ModelSpecError, path=path,
                         fix="fix the factory or its keyword arguments (--model-kwargs)",
                         **kwargs)
    if spec.endswith(".py") or Path(spec).is_file():
        raise ModelSpecError(f"{what}: name the factory function in the file, e.g. "
                             f"{spec}:build")
    raise ModelSpecError(f"unknown model {spec!r}; {_forms()}")


def resolve_model(spec: ModelSpec, *, checkpoint: str | Path | None = None,
                  model_kwargs: str | Path | Mapping[str, Any] | None = None,
                  pretrained: bool = False, sha256: str | None = None) -> nn.Module:
    """Build (or take) a model, optionally load a checkpoint into it; eval mode.

    Args:
        spec: see the module docstring.
        checkpoint: safetensors or torch file of the weights
            (:func:`bitsmith.models.checkpoint.load_checkpoint`).
        model_kwargs: keyword arguments of the builder / factory: a mapping, a YAML/JSON
            file, inline YAML (``"{num_classes: 100}"``) or ``"num_classes=100"``.
        pretrained: registered CIFAR ResNets only: load the shipped weights (20 and 32).
        sha256: expected SHA-256 (hex prefix) of the checkpoint file.

    Raises:
        ModelSpecError: unknown name; factory file or module missing, failing to import,
            raising, or returning something that is not an ``nn.Module``; bad keyword
            arguments.
        CheckpointError: see :func:`~bitsmith.models.checkpoint.load_checkpoint`.
    """
    kwargs = load_mapping(model_kwargs, what="model keyword arguments (--model-kwargs)",
                          error=ModelSpecError)
    label = describe_model(spec)
    if isinstance(spec, nn.Module):
        if kwargs or pretrained:
            raise ModelSpecError("model keyword arguments and 'pretrained' need a model spec "
                                 "to build, not an already built nn.Module")
        model: Any = spec
    elif isinstance(spec, str):
        spec = spec.strip()
        model = _from_string(spec, kwargs, pretrained, checkpoint is not None)
    elif callable(spec):
        model = call_user(spec, what=f"model factory {label!r}", error=ModelSpecError,
                          fix="fix the factory or its keyword arguments", **kwargs)
    else:
        raise ModelSpecError(f"model: expected a name, a 'file.py:function' reference, an "
                             f"nn.Module or a factory, got {type(spec).__name__}")
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model factory {label!r} returned {type(model).__name__}, not a "
                             "torch.nn.Module; return the model instance")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, sha256=sha256, model_name=f"model {label!r}")
    return model.eval()
