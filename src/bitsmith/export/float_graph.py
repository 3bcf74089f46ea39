"""The float ONNX graph of a quantized model: quantizers removed, weights at their quantized values.

:func:`export_float_onnx` copies the quantized model, puts every quantized
layer's weight at its simulated quantized value ``Q_w(W)``, turns the layers
back into their plain torch classes and exports with the TorchScript exporter
(``dynamo=False``), which keeps parameter names as initializer names
(``layer1.0.conv1.weight``) so that ONNX nodes map back to layers. The QDQ
pass (:mod:`bitsmith.export.onnx_qdq`) then adds the quantization.

A ``Linear`` applied to an input of rank other than 2 (transformer MLPs and attention
projections, ConvNeXt's pointwise layers) is exported by torch as ``MatMul`` with a
constant-folded, renamed transposed weight; such layers become :class:`MatMulLinear`
first, whose ``MatMul(x, <layer>.weight)`` keeps the name (the weight stored transposed,
``(in, out)``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from bitsmith.atomic import atomic_path
from bitsmith.export.errors import ExportError
from bitsmith.graph import quantized_layers
from bitsmith.graph.qmodules import QuantizedLayer, QuantLayerMixin, untwin

INPUT_NAME = "input"
OUTPUT_NAME = "output"


class MatMulLinear(nn.Module):
    """``y = x @ weight (+ bias)`` with ``weight`` of shape ``(in, out)``: a Linear whose ONNX
    form is ``MatMul(x, <name>.weight)`` for inputs of any rank (``x``: ``(..., in)``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)
        return y if self.bias is None else y + self.bias


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def dequantized_copy(qmodel: nn.Module, matmul_layers: Iterable[str] = ()
                     ) -> tuple[nn.Module, dict[str, QuantizedLayer]]:
    """A float copy of ``qmodel`` whose quantized layers hold ``Q_w(W)``; plus the originals.

    Each quantized layer gets its own parameter (a weight tied to another module, e.g. a
    language-model head tied to the embedding, is untied: the embedding keeps the float
    values the simulation uses). Linear layers named in ``matmul_layers`` (quantized or not)
    become :class:`MatMulLinear`.

    Returns ``(float_model, layers)`` where ``layers`` maps each quantized layer name to the
    quantized module of ``qmodel`` (for its quantizers).
    """
    layers = quantized_layers(qmodel)
    matmul = set(matmul_layers)
    work = copy.deepcopy(qmodel).eval()
    with torch.no_grad():
        for name, module in quantized_layers(work).items():
            w_hat = layers[name].quantized_weight().detach().clone()
            module.weight = nn.Parameter(w_hat, requires_grad=False)
            untwin(module, QuantLayerMixin, ("weight_quantizer", "input_quantizer"))
        for name in matmul:  # quantized or kept float by the Policy
            linear = work.get_submodule(name)
            if isinstance(linear, nn.Linear):
                _set_submodule(work, name, MatMulLinear(linear))
    if hasattr(work, "bitsmith"):
        del work.bitsmith
    return work, layers


def input_names(count: int) -> list[str]:
    """ONNX graph input names: ``input`` or ``input_0, input_1, ...``."""
    return [INPUT_NAME] if count == 1 else [f"{INPUT_NAME}_{i}" for i in range(count)]


def export_float_onnx(model: nn.Module, path: str | Path, example_inputs: tuple[torch.Tensor, ...],
                      opset: int = 17, dynamic_batch: bool = True,
                      tracer_notes: list[str] | None = None) -> Path:
    """Export a float model with the TorchScript exporter (initializer names = parameter names).

    Args:
        example_inputs: a tuple of example tensors (batch dimension first).
        dynamic_batch: make dimension 0 of inputs and outputs symbolic (``N``).
        tracer_notes: if given, receives the tracer's warnings that the graph may not
            generalise (a tensor turned into a Python value: data-dependent control flow).
    """
    path = Path(path)
    names = input_names(len(example_inputs))
    axes = {n: {0: "N"} for n in [*names, OUTPUT_NAME]} if dynamic_batch else None
    with warnings.catch_warnings(record=True) as caught, atomic_path(path) as tmp:
        warnings.simplefilter("always")  # the legacy-exporter deprecation and constant-fold notes
        try:
            torch.onnx.export(model.eval(), example_inputs, str(tmp), dynamo=False,
                              input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        except torch.onnx.errors.OnnxExporterError as err:  # an op ONNX cannot express
            shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs)
            reason = str(err).split(". Please feel free")[0].splitlines()[0]
            raise ExportError(
                f"{type(model).__name__}: torch.onnx.export cannot export it for example "
                f"inputs of shape {shapes}: {reason}. Fix: export with the input size the "
                "model is built for (e.g. 224x224 for torchvision classifiers), or replace "
                "that operation") from err
    if tracer_notes is not None:
        tracer_notes.extend(sorted({str(w.message).splitlines()[0] for w in caught
                                    if issubclass(w.category, torch.jit.TracerWarning)
                                    and "Python" in str(w.message)}))
    return path
