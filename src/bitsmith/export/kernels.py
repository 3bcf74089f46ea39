"""What ONNX Runtime really runs: kernels of its *optimised* graph, per layer and in total.

An exported QDQ graph states an intent; ONNX Runtime's graph transformers decide what
runs. :func:`runtime_kernels` lets ONNX Runtime optimise the model
(``SessionOptions.optimized_model_filepath``, CPU provider, the *extended* level: every
QDQ and operator fusion; the level above it only changes the memory layout of float
convolutions, NCHWc, which does not change any kernel's class), reads the optimised graph
back and classifies each compute node:

* **integer**: ``QLinearConv``, ``QGemm``, ``QLinearMatMul``, ``MatMulIntegerToFloat``,
  ``MatMulInteger``, ``ConvInteger``, ``DynamicQuantizeMatMul``, ... (uint8/int8 inputs,
  int32 accumulation);
* **weight_only**: ``MatMulNBits`` (low-bit block-wise weights, float activations);
* **float**: ``Conv``, ``FusedConv``, ``NchwcConv``, ``Gemm``, ``MatMul``, ``FusedMatMul``,
  ``LSTM``, ... .

A layer is found in the optimised graph by its weight initializer (the export names them
``<layer>.weight``, ``<layer>.weight.q``, ...; ONNX Runtime keeps initializer names when it
fuses), else by the name of its node in the exported graph.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

INTEGER_KERNELS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM",
    "QLinearConvTranspose", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
})
WEIGHT_ONLY_KERNELS = frozenset({"MatMulNBits", "MatMulBnb4"})
FLOAT_KERNELS = frozenset({
    "Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul",
    "FusedMatMul", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "Einsum",
})
#: Kernels that multiply by a weight or activation tensor (the ones worth counting).
COMPUTE_KERNELS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM",
    "QLinearConvTranspose",
}) | WEIGHT_ONLY_KERNELS | FLOAT_KERNELS


#: The "op" of a layer the ONNX exporter removed: its output reaches no model output (e.g. the
#: pooler of a Hugging Face encoder whose pooled output the wrapper does not return).
ABSENT = "absent"


def kernel_class(op_type: str) -> str:
    """``"integer"``, ``"weight_only"``, ``"float"``, ``"absent"`` or ``"other"`` for an ORT
    op type (or :data:`ABSENT`)."""
    if op_type == ABSENT:
        return "absent"
    if op_type in WEIGHT_ONLY_KERNELS:
        return "weight_only"
    if op_type in INTEGER_KERNELS:
        return "integer"
    if op_type in FLOAT_KERNELS:
        return "float"
    return "other"


@dataclass
class RuntimeKernels:
    """Kernels of ONNX Runtime's optimised graph.

    ``layers``: layer name -> op type running it (``"?"`` when it could not be found);
    ``compute``: count per class (``integer``, ``weight_only``, ``float``) of every compute
    kernel in the graph, layers or not (attention's activation-activation MatMuls count
    as float); ``ops``: count of every op type in the optimised graph.
    """

    layers: dict[str, str] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)

    def layer_class(self, name: str) -> str:
        return kernel_class(self.layers.get(name, "?"))

    @property
    def integer_layers(self) -> list[str]:
        return [n for n in self.layers if self.layer_class(n) == "integer"]

    @property
    def weight_only_layers(self) -> list[str]:
        return [n for n in self.layers if self.layer_class(n) == "weight_only"]

    @property
    def float_layers(self) -> list[str]:
        return [n for n in self.layers
                if self.layer_class(n) not in ("integer", "weight_only", "absent")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimized_graph(model_path: str | Path, threads: int = 1) -> onnx.ModelProto:
    """ONNX Runtime's optimised version of ``model_path`` (extended optimisations, CPU)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bitsmith-ortopt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def _param_owner(name: str, layers: list[str]) -> str | None:
    """The layer whose weight (or, failing that, bias) initializer ``name`` is."""
    for param in ("weight", "bias"):
        for layer in layers:
            if name == f"{layer}.{param}" or name.startswith(f"{layer}.{param}."):
                return layer
    return None


def runtime_kernels(model_path: str | Path, layer_nodes: dict[str, str],
                    threads: int = 1) -> RuntimeKernels:
    """Classify the kernels ONNX Runtime runs for ``model_path``.

    Args:
        model_path: an exported ``.onnx`` file.
        layer_nodes: layer name -> name of its node in the exported graph (fallback match).
    """
    graph = optimized_graph(model_path, threads).graph
    inits = {t.name for t in graph.initializer}
    names = sorted(layer_nodes, key=len, reverse=True)  # longest first: "a.b" before "a"
    found: dict[str, str] = {}
    compute: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in COMPUTE_KERNELS:
            compute[kernel_class(node.op_type)] += 1
        owner = None
        for inp in node.input:
            if inp in inits:
                owner = _param_owner(inp, names)
                if owner is not None:
                    break
        if owner is None and node.op_type in COMPUTE_KERNELS:
            owner = next((n for n in names if layer_nodes[n] and layer_nodes[n] in node.name),
                         None)
        if owner is not None and node.op_type in COMPUTE_KERNELS and owner not in found:
            found[owner] = node.op_type
    return RuntimeKernels(
        layers={n: found.get(n, "?") for n in layer_nodes},
        compute={k: compute.get(k, 0) for k in ("integer", "weight_only", "float")},
        ops=dict(Counter(n.op_type for n in graph.node)))
