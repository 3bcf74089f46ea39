"""The float ONNX graph of a quantized model: quantizers removed, weights at their quantized values.

:func:`export_float_onnx` copies the quantized model, puts every quantized
layer's weight at its simulated quantized value ``Q_w(W)``, turns the layers
back into their plain torch classes and exports with the TorchScript exporter
(``dynamo=False``), which keeps parameter names as initializer names
(``layer1.0.conv1.weight``) so that ONNX nodes map back to layers. The QDQ
pass (:mod:`bitsmith.export.onnx_qdq`) then adds the quantization.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from bitsmith.atomic import atomic_path
from bitsmith.graph import quantized_layers
from bitsmith.graph.qmodules import QuantLayerMixin

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def dequantized_copy(qmodel: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A float copy of ``qmodel`` whose quantized layers hold ``Q_w(W)``; plus the originals.

    Returns ``(float_model, layers)`` where ``layers`` maps each quantized layer name to the
    quantized module of ``qmodel`` (for its quantizers).
    """
    layers = quantized_layers(qmodel)
    work = copy.deepcopy(qmodel).eval()
    with torch.no_grad():
        for name, module in quantized_layers(work).items():
            w_hat = layers[name].quantized_weight().detach().clone()
            module.weight.copy_(w_hat)
            base = next(c for c in type(module).__mro__[1:]
                        if issubclass(c, nn.Module) and not issubclass(c, QuantLayerMixin))
            for attr in ("weight_quantizer", "input_quantizer"):
                if attr in module._modules:
                    del module._modules[attr]
            module.__class__ = base
    if hasattr(work, "bitsmith"):
        del work.bitsmith
    return work, layers


def input_names(count: int) -> list[str]:
    """ONNX graph input names: ``input`` or ``input_0, input_1, ...``."""
    return [INPUT_NAME] if count == 1 else [f"{INPUT_NAME}_{i}" for i in range(count)]


def export_float_onnx(model: nn.Module, path: str | Path, example_inputs: tuple[torch.Tensor, ...],
                      opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export a float model with the TorchScript exporter (initializer names = parameter names).

    Args:
        example_inputs: a tuple of example tensors (batch dimension first).
        dynamic_batch: make dimension 0 of inputs and outputs symbolic (``N``).
    """
    path = Path(path)
    names = input_names(len(example_inputs))
    axes = {n: {0: "N"} for n in [*names, OUTPUT_NAME]} if dynamic_batch else None
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation and constant-fold notes
        torch.onnx.export(model.eval(), example_inputs, str(tmp), dynamo=False,
                          input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True)
    return path
