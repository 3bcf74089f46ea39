"""Quantized layers made by swapping the class of an existing Conv/Linear module.

``make_quantized(module, spec, name)`` turns a ``Conv2d`` (or any supported
layer, subclasses included) into a ``QuantConv2d`` *in place*: the module keeps
its parameters and attribute names (so ``state_dict`` keys stay
``<name>.weight``), gains a ``weight_quantizer`` and an ``input_quantizer``
(:class:`~bitsmith.graph.quantizer.Quantizer`, or ``None`` for float), and its
forward quantizes the input activation and the weight before the original
operation. ``isinstance(m, nn.Conv2d)`` still holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeGuard, cast

import torch.nn.functional as F
from torch import Tensor, nn

from bitsmith.graph.layer_table import QUANTIZABLE_TYPES
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import LayerSpec

_CONV_T = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d}


if TYPE_CHECKING:  # to the type checker a layer mixin is an nn.Module with its own fields
    LayerMixinBase = nn.Module
else:  # at run time the mixin comes first in the twin class (mixin, Conv2d): a plain class
    LayerMixinBase = object


class QuantLayerMixin(LayerMixinBase):
    """Forward of a quantized layer: ``op(input_q(x), weight_q(W), b)``.

    Also the static type of a quantized layer (:data:`QuantizedLayer`): an ``nn.Module``
    with a ``weight`` (and ``bias``) and the fields below, which :func:`make_quantized`
    attaches.
    """

    weight: Tensor
    bias: Tensor | None
    weight_quantizer: Quantizer | None
    input_quantizer: Quantizer | None
    layer_spec: LayerSpec
    layer_name: str
    bypass_weight_quantizer: bool  # set during calibration: statistics of the float model

    def quantized_weight(self) -> Tensor:
        w = self.weight
        if self.weight_quantizer is None or self.bypass_weight_quantizer:
            return w
        return self.weight_quantizer(w)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return layer_op(self, x, self.quantized_weight(), output_size)


QuantizedLayer = QuantLayerMixin  # the type of a layer that make_quantized swapped


def layer_op(layer: nn.Module, x: Tensor, weight: Tensor,
             output_size: list[int] | None = None) -> Tensor:
    """Run ``layer``'s own operation (linear, conv, transposed conv) with ``weight`` instead of
    its parameter; ``x`` and the result have the layer's usual shapes."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    for base, op in _CONV_T.items():
        if isinstance(layer, base):
            n = 1 if base is nn.ConvTranspose1d else 2
            conv = cast(nn.ConvTranspose2d, layer)  # the 1-D and 2-D classes share the fields
            padding = cast(tuple[int, ...], conv.padding)  # never a string when transposed
            pad = conv._output_padding(x, output_size, list(conv.stride), list(padding),
                                       list(conv.kernel_size), n, list(conv.dilation))
            return op(x, weight, conv.bias, conv.stride, padding, pad, conv.groups,
                      conv.dilation)
    conv2d = cast(nn.Conv2d, layer)  # Conv1d/2d/3d share _conv_forward(x, weight, bias)
    return conv2d._conv_forward(x, weight, conv2d.bias)


_CLASS_CACHE: dict[tuple[type, type], type] = {}


def twin_class(mixin: type, cls: type[nn.Module], prefix: str) -> type[nn.Module]:
    """The cached subclass ``<prefix><cls>(mixin, cls)`` that a module's class is swapped to."""
    key = (mixin, cls)
    if key not in _CLASS_CACHE:
        _CLASS_CACHE[key] = type(f"{prefix}{cls.__name__}", (mixin, cls), {})
    return _CLASS_CACHE[key]


def untwin(module: nn.Module, mixin: type, children: Iterable[str] = (),
           attrs: Iterable[str] = ()) -> nn.Module:
    """Undo :func:`twin_class` in place: ``module`` becomes its plain torch class again,
    without the mixin's child modules ``children`` and plain attributes ``attrs``."""
    base = next(c for c in type(module).__mro__[1:]
                if issubclass(c, nn.Module) and not issubclass(c, mixin))
    for name in children:
        module._modules.pop(name, None)
    for name in attrs:
        module.__dict__.pop(name, None)
    module.__class__ = base
    return module


def is_quantized(module: nn.Module) -> TypeGuard[QuantizedLayer]:
    """True for a layer :func:`make_quantized` swapped (its quantizers are typed after it)."""
    return isinstance(module, QuantLayerMixin)


def make_quantized(module: nn.Module, spec: LayerSpec, name: str, weight_axis: int = 0,
                   act_axis: int = 1) -> nn.Module:
    """Swap ``module``'s class to its quantized twin in place and attach quantizers."""
    if not isinstance(module, QUANTIZABLE_TYPES):
        raise TypeError(f"{name}: {type(module).__name__} is not a quantizable layer type")
    if is_quantized(module):
        raise ValueError(f"{name}: layer is already quantized")
    module.__class__ = twin_class(QuantLayerMixin, type(module), "Quant")
    layer = cast(QuantizedLayer, module)
    layer.layer_spec = spec
    layer.layer_name = name
    layer.bypass_weight_quantizer = False
    layer.weight_quantizer = (None if spec.weight is None else
                              Quantizer(spec.weight, "weight", weight_axis, f"{name}.weight"))
    layer.input_quantizer = (None if spec.act is None else
                             Quantizer(spec.act, "act", act_axis, f"{name}.input"))
    return layer


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    """``name -> module`` for every quantized layer of ``model``."""
    return {n: m for n, m in model.named_modules() if is_quantized(m)}
