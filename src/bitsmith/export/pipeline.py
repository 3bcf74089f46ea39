"""The whole deployment check in one call: export, pack, compare, time, summarise.

:func:`deploy` writes ``fp32.onnx``, ``quantized.onnx`` and ``model.safetensors``
(packed) into a folder, compares the ONNX Runtime outputs with the PyTorch
simulation on the evaluation data, times FP32 vs quantized ONNX (interleaved
medians, fixed threads) and returns an :class:`ExportSummary` that is printed
by ``bitsmith export`` and saved as ``summary.json`` / ``summary.md``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsmith.atomic import atomic_write_text
from bitsmith.export.errors import ExportError
from bitsmith.export.onnx_export import (
    Agreement,
    OnnxExportReport,
    as_model_inputs,
    compare_onnx_references,
    export_fp32_onnx,
    export_onnx,
    split_batch,
)
from bitsmith.export.ort import input_dtype, interleaved_latency, make_session
from bitsmith.export.packed import PackedReport, save_packed
from bitsmith.export.runtime_sim import runtime_simulation
from bitsmith.quantize import quant_info


@dataclass
class ExportSummary:
    """Sizes in bytes, latencies in ms (median), accuracies and agreement in percent."""

    model: str
    policy_fingerprint: str
    avg_weight_bits: float
    sizes: dict[str, int]
    latency: dict[str, dict[str, Any]]
    agreement: dict[str, Any]
    accuracy: dict[str, float | None]
    onnx: dict[str, Any]
    packed: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    runtime_agreement: dict[str, Any] | None = None
    #: ONNX Runtime's optimised vs unoptimised session (:func:`compare_onnx_optimisation`)
    runtime_reproducibility: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "summary.json", json.dumps(self.to_dict(), indent=2))
        atomic_write_text(folder / "summary.md", self.to_markdown())
        return folder / "summary.json", folder / "summary.md"

    def to_markdown(self) -> str:
        s, a, acc = self.sizes, self.agreement, self.accuracy
        lines = [
            f"# Export summary: {self.model}",
            "",
            f"Policy {self.policy_fingerprint[:12]}, average weight bits "
            f"{self.avg_weight_bits:.2f}.",
            "",
            "| artifact | bytes | vs FP32 state dict |",
            "|---|---:|---:|",
        ]
        base = s["fp32_state_dict"]
        for key in ("fp32_state_dict", "fp32_onnx", "quantized_onnx", "packed",
                    "cost_model_prediction"):
            lines.append(f"| {key} | {s[key]:,} | {base / max(s[key], 1):.2f}x smaller |")
        same = "equal" if s["packed_tensors"] == s["cost_model_prediction"] else "differs"
        lines += ["", f"Packed payload {s['packed_tensors']:,} bytes vs cost model "
                      f"{s['cost_model_prediction']:,} bytes ({same});"
                      f" header/metadata {s['packed'] - s['packed_tensors']:,} bytes.", "",
                  "| batch | FP32 ms | quantized ms | speedup | FP32 items/s | quantized items/s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for batch, row in self.latency.items():
            lines.append(f"| {batch} | {row['fp32']['median_ms']:.3f} | "
                         f"{row['quantized']['median_ms']:.3f} | {row['speedup']:.2f}x | "
                         f"{row['fp32']['throughput_per_s']:.0f} | "
                         f"{row['quantized']['throughput_per_s']:.0f} |")

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}%"

        lines += ["", f"Accuracy on {a['count']} evaluation examples: FP32 {pct(acc['fp32'])}, "
                      f"PyTorch simulation {pct(acc['simulation'])}, ONNX Runtime "
                      f"{pct(acc['onnx'])}.",
                  f"ONNX vs simulation: top-1 agreement {a['top1_agreement']:.2f}%, max |logit "
                  f"error| {a['max_abs_error']:.4f}, mean {a['mean_abs_error']:.4f}."]
        r = self.runtime_agreement
        if r is not None:
            lines.append(
                f"ONNX vs the simulation of this export ({r['runtime_points']} integer-chain "
                f"points, {r['int32_bias_layers']} int32 biases): top-1 agreement "
                f"{r['top1_agreement']:.2f}%, max |logit error| {r['max_abs_error']:.4f}, mean "
                f"{r['mean_abs_error']:.4f}; its accuracy {pct(r['torch_accuracy'])}.")
        r = self.runtime_reproducibility
        if r is not None:
            lines.append(
                f"ONNX Runtime vs itself with graph optimisations off (same grids, float "
                f"rounding only): top-1 agreement {r['top1_agreement']:.2f}%, max |logit "
                f"error| {r['max_abs_error']:.4f}: what float rounding alone changes on this "
                f"model and data.")
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"


def state_dict_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``: what an FP32 checkpoint takes on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def _accuracy(model: nn.Module, data: Any, n_inputs: int) -> float | None:
    """Top-1 (percent) of ``model`` on labelled ``data`` (:func:`split_batch`), else None."""
    correct = total = 0
    model.eval()
    for batch in data:
        xs, y = split_batch(batch, n_inputs)
        if y is None:
            return None
        correct += int((model(*xs).argmax(-1) == y).sum())
        total += y.numel()
    return 100.0 * correct / total if total else None


def time_models(paths: Sequence[str | Path], input_shape: Sequence[int], batches: Sequence[int],
                runs: int = 100, threads: int = 2, runs_large: int | None = None,
                example: np.ndarray | Sequence[np.ndarray] | None = None
                ) -> dict[int, list[dict[str, float]]]:
    """Interleaved median latency of each ONNX model at each batch size.

    ``input_shape`` is the first input's shape without the batch dimension; ``runs_large``
    (default ``runs``) is used for batches above 8. Inputs: the rows of ``example`` (real
    data, one array per model input, each ``(n, ...)``: images, int64 token ids, masks)
    repeated to each batch size; without it, synthetic inputs of the dtypes the first model
    declares (standard-normal floats, zeros for integer inputs: token id 0 exists in every
    vocabulary; inputs after the first take their shapes from the graph).
    """
    sessions = [make_session(p, threads) for p in paths]
    out = {}
    for batch in batches:
        xs = _timing_inputs(sessions[0], input_shape, batch, example)
        n = runs if batch <= 8 or runs_large is None else runs_large
        out[batch] = [t.to_dict() for t in interleaved_latency(sessions, xs, n)]
    return out


def _timing_inputs(session: Any, input_shape: Sequence[int], batch: int,
                   example: np.ndarray | Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The ``batch``-row inputs of :func:`time_models`, one per session input."""
    specs = session.get_inputs()
    if example is not None:
        arrays = [example] if isinstance(example, np.ndarray) else list(example)
        rows = np.arange(batch) % len(arrays[0])
        return [np.ascontiguousarray(np.take(a, rows, axis=0), dtype=input_dtype(spec))
                for a, spec in zip(arrays, specs)]
    rng = np.random.default_rng(0)
    out: list[np.ndarray] = []
    for i, spec in enumerate(specs):
        shape = tuple(input_shape) if i == 0 else _static_shape(spec)
        dtype = input_dtype(spec)
        out.append(rng.standard_normal((batch, *shape)).astype(dtype)
                   if np.issubdtype(dtype, np.floating) else np.zeros((batch, *shape), dtype))
    return out


def _static_shape(spec: Any) -> tuple[int, ...]:
    """A session input's shape after the batch dimension (each dimension fixed)."""
    dims = tuple(spec.shape[1:])
    if not all(isinstance(d, int) for d in dims):
        raise ExportError(f"input {spec.name!r} has symbolic dimensions {dims}; time it "
                          "with real example inputs")
    return dims


@dataclass(frozen=True)
class Timing:
    """The latency protocol of :func:`deploy`: interleaved medians of ``runs`` rounds at
    batch sizes up to 8 and ``runs_large`` above, ``threads`` ONNX Runtime threads."""

    batches: tuple[int, ...] = (1, 64)
    runs: int = 200
    runs_large: int = 30
    threads: int = 2


def deploy(model: nn.Module, qmodel: nn.Module, out_dir: str | Path, *, example_inputs: Any,
           calibration: Any, evaluation: Any, model_name: str | None = None,
           model_kwargs: dict[str, Any] | None = None, timing: Timing = Timing(),
           integer_residuals: bool = True, log: Callable[[str], None] | None = None,
           key: bytes | str | None = None) -> ExportSummary:
    """Export ``qmodel`` (ONNX + packed), check it against the simulation, time it vs FP32.

    Args:
        model: the float model ``qmodel`` was made from (FP32 baseline and accuracy).
        qmodel: the quantized model (:func:`bitsmith.quantize`).
        out_dir: folder for ``fp32.onnx``, ``quantized.onnx``, ``model.safetensors`` and
            the summary files.
        example_inputs: one example batch of the model's inputs: a tensor or a tuple (e.g.
            token ids and attention mask); its rows are the timed inputs.
        calibration: data for the ONNX export's extra quantization points.
        evaluation: ``(inputs, labels)`` batches for agreement and accuracy.
        timing: the latency protocol (:class:`Timing`).
        key: secret key: sign the packed artifact with HMAC-SHA256 (see ``save_packed``).
    """
    say = log or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = as_model_inputs(example_inputs)
    say("exporting FP32 ONNX")
    fp32_path = export_fp32_onnx(model, out / "fp32.onnx", inputs)
    say("exporting quantized ONNX (QDQ)")
    onnx_report: OnnxExportReport = export_onnx(qmodel, out / "quantized.onnx", inputs,
                                                calibration=calibration,
                                                integer_residuals=integer_residuals)
    say("writing the packed artifact")
    packed: PackedReport = save_packed(qmodel, out / "model.safetensors",
                                       example_inputs=tuple(x[:1] for x in inputs),
                                       model_name=model_name,
                                       model_kwargs=model_kwargs, key=key)
    say("comparing ONNX Runtime with the PyTorch simulation and with itself, graph "
        "optimisations off")
    # the simulation of the export, unless the export has no integer-chain point and no
    # int32 bias (the simulation is then already that model)
    modelled = onnx_report.runtime_points or onnx_report.int32_bias_layers
    references: dict[str, Any] = {"simulation": qmodel, "itself": "unoptimised"}
    if modelled:
        references["runtime"] = runtime_simulation(qmodel, onnx_report)
    found = compare_onnx_references(onnx_report.path, references, evaluation, timing.threads)
    agreement: Agreement = found["simulation"]
    runtime_agreement = ({**found["runtime"].to_dict(), **onnx_report.runtime_counts()}
                         if modelled else None)
    fp32_acc = _accuracy(model, evaluation, len(inputs))
    say("timing FP32 vs quantized (interleaved medians)")
    timings = time_models([fp32_path, onnx_report.path], tuple(inputs[0].shape[1:]),
                          timing.batches, timing.runs, timing.threads, timing.runs_large,
                          example=[x.detach().cpu().numpy() for x in inputs])
    latency = {str(b): {"fp32": t[0], "quantized": t[1],
                        "speedup": t[0]["median_ms"] / t[1]["median_ms"]}
               for b, t in timings.items()}
    sizes = {"fp32_state_dict": state_dict_bytes(model),
             "fp32_onnx": Path(fp32_path).stat().st_size,
             "quantized_onnx": onnx_report.file_bytes, "packed": packed.file_bytes,
             "packed_tensors": packed.tensor_bytes,
             "cost_model_prediction": packed.predicted_bytes,
             "cost_model_fp32": packed.fp32_bytes}
    notes = list(onnx_report.notes) + list(packed.differences)
    float_layers = onnx_report.float_layer_names
    if float_layers:
        notes.append(f"layers without an integer kernel in ONNX Runtime: {float_layers}")
    if onnx_report.calibrated_points:
        notes.append(f"{len(onnx_report.calibrated_points)} extra uint8 points calibrated for "
                     "integer chains (with the int32 biases, the deviations from the "
                     "simulation; the simulation of this export models them)")
    if onnx_report.runtime_unmatched:
        notes.append(f"{len(onnx_report.runtime_unmatched)} integer-chain points have no twin "
                     "in the PyTorch model (inside leaf modules, or the model is not traced); "
                     "the simulation of this export keeps them in float")
    info = quant_info(qmodel)
    summary = ExportSummary(
        model=model_name or type(model).__name__,
        policy_fingerprint=info.policy.fingerprint(), avg_weight_bits=packed.avg_weight_bits,
        sizes=sizes, latency=latency, agreement=agreement.to_dict(),
        accuracy={"fp32": fp32_acc, "simulation": agreement.torch_accuracy,
                  "onnx": agreement.onnx_accuracy},
        onnx=onnx_report.to_dict(), packed=packed.to_dict(), notes=notes,
        runtime_agreement=runtime_agreement,
        runtime_reproducibility=found["itself"].to_dict())
    summary.save(out)
    return summary
