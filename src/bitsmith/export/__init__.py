"""Deployment: ONNX (QDQ) export for ONNX Runtime, the packed artifact, latency tables.

See ``docs/export.md``. The names below import their module on first use
(:mod:`bitsmith._lazy`): the command line starts without loading ONNX.
"""

from typing import TYPE_CHECKING

from bitsmith._lazy import lazy_exports

_MODULES = {
    "bitsmith.export.errors": ("ArtifactError", "ExportError"),
    "bitsmith.export.frozen": ("FrozenWeightQuantizer", "thaw_weights"),
    "bitsmith.export.latency": ("LatencyTable", "LayerGeometry", "measure_latency_table",
                                "precision_key", "register_runtime"),
    "bitsmith.export.onnx_export": ("Agreement", "OnnxExportReport", "compare_onnx",
                                    "compare_onnx_optimisation", "compare_onnx_references",
                                    "export_fp32_onnx", "export_onnx"),
    "bitsmith.export.packed": ("PackedReport", "load_packed", "read_packed", "save_packed"),
    "bitsmith.export.pipeline": ("ExportSummary", "deploy"),
    "bitsmith.export.runtime_sim": ("runtime_simulation",),
}
__all__ = [
    "Agreement", "ArtifactError", "ExportError", "ExportSummary", "FrozenWeightQuantizer",
    "LatencyTable", "LayerGeometry", "OnnxExportReport", "PackedReport", "compare_onnx",
    "compare_onnx_optimisation", "compare_onnx_references", "deploy", "export_fp32_onnx",
    "export_onnx", "load_packed", "measure_latency_table", "precision_key", "read_packed",
    "register_runtime", "runtime_simulation", "save_packed", "thaw_weights",
]
__getattr__, __dir__ = lazy_exports(
    __name__, {name: module for module, names in _MODULES.items() for name in names})

if TYPE_CHECKING:
    from bitsmith.export.errors import ArtifactError, ExportError
    from bitsmith.export.frozen import FrozenWeightQuantizer, thaw_weights
    from bitsmith.export.latency import (
        LatencyTable,
        LayerGeometry,
        measure_latency_table,
        precision_key,
        register_runtime,
    )
    from bitsmith.export.onnx_export import (
        Agreement,
        OnnxExportReport,
        compare_onnx,
        compare_onnx_optimisation,
        compare_onnx_references,
        export_fp32_onnx,
        export_onnx,
    )
    from bitsmith.export.packed import PackedReport, load_packed, read_packed, save_packed
    from bitsmith.export.pipeline import ExportSummary, deploy
    from bitsmith.export.runtime_sim import runtime_simulation
