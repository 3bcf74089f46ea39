"""Runtime-aware evaluation: accuracy and latency of each configuration on ONNX Runtime.

:class:`OnnxRuntimeBackend` plugs into :class:`~bitsmith.tune.evaluator.TorchEvaluator`
(``backend=``). For every configuration it

1. exports the quantized model with :func:`bitsmith.export.export_onnx` (QDQ graph;
   ONNX Runtime fuses it into ``QLinearConv`` / ``QGemm`` / ``QLinearAdd`` integer
   kernels; the extra points between integer kernels calibrated on the evaluator's
   calibration inputs, never on validation data),
2. opens a session with :func:`bitsmith.export.ort.make_session` and runs the
   validation images through it: the **accuracy is the integer runtime's**,
3. reads from ONNX Runtime's optimised graph how many layers really run integer,
   weight-only (``MatMulNBits``) and float kernels (``Measurement.kernels``; a policy whose
   "quantized" layers run as float ``FusedConv`` shows it there, and its latency reflects it),
4. times one batch with :func:`bitsmith.export.ort.interleaved_latency` (median of
   ``latency_runs`` runs after warm-up), which fills ``Measurement.latency_ms`` — the
   ``latency`` metric of an objective (``Objective("pareto", "latency")`` or
   ``Objective("min_cost", "latency", tolerance=...)``).

What the runtime can express is what :func:`~bitsmith.export.export_onnx` emits:
u8s8 (uint8 activations, int8 weights; symmetric activation grids are shifted into
uint8, there is no s8s8 form), per-tensor or per-channel weights, ``reduced_range``
weights, layers kept in float, and sub-8-bit grids stored in int8. So searches over
``scheme``, ``granularity``, ``reduced_range``, ``float_layers`` and bit widths see
their real accuracy and latency on this CPU.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class OrtRunner:
    """A compiled configuration: the ONNX Runtime session (callable on a batch)."""

    def __init__(self, session: Any, path: Path, report: Any) -> None:
        self.session = session
        self.path = path
        self.report = report

    def __call__(self, x: Tensor) -> Tensor:
        from bitsmith.export.ort import run

        return torch.from_numpy(np.asarray(run(self.session, [x.detach().cpu().numpy()])[0]))


class OnnxRuntimeBackend:
    """Run each configuration as an integer ONNX model in ONNX Runtime (CPU).

    Args:
        threads: intra-op threads of each session (latency is per this many threads).
        latency_runs, warmup: timed and warm-up runs of one batch.
        latency_batch: images per timed batch (default: the evaluator's batch).
        calibration_batches: calibration batches for the export's extra points.
        work_dir: where the ``.onnx`` files go (default: a temporary directory,
            removed with the backend); ``keep`` keeps every exported file.
        export_kwargs: passed to :func:`bitsmith.export.export_onnx`
            (``integer_residuals``, ``observer``, ...).
    """

    measures_latency = True
    fake_quant = False

    def __init__(self, threads: int = 1, latency_runs: int = 20, warmup: int = 3,
                 latency_batch: int | None = None, calibration_batches: int = 4,
                 work_dir: str | Path | None = None, keep: bool = False,
                 **export_kwargs: Any) -> None:
        self.threads = int(threads)
        self.latency_runs = int(latency_runs)
        self.warmup = int(warmup)
        self.latency_batch = latency_batch
        self.calibration_batches = int(calibration_batches)
        self.export_kwargs = export_kwargs
        self.keep = keep
        self._tmp = None
        if work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bitsmith-ort-")
            work_dir = self._tmp.name
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._calibration: list[Tensor] | None = None
        self._count = 0

    def attach(self, evaluator: Any) -> None:
        """Called by the evaluator: take its calibration inputs for the export."""
        self._calibration = evaluator.calibration_batches(self.calibration_batches)

    def compile(self, qmodel: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
        from bitsmith.export import export_onnx
        from bitsmith.export.ort import make_session

        self._count += 1
        path = self.work_dir / f"config-{self._count}.onnx"
        calibration = self._calibration if self._calibration is not None else [example]
        # the trial is scored on the session itself: no simulation of the export is needed
        kwargs = {"runtime_model": False, **self.export_kwargs}
        report = export_onnx(qmodel.eval(), path, example[:1], calibration=calibration,
                             calibration_batches=self.calibration_batches, **kwargs)
        session = make_session(path, self.threads)
        if not self.keep:
            prev = self.work_dir / f"config-{self._count - 1}.onnx"
            prev.unlink(missing_ok=True)
        return OrtRunner(session, path, report)

    def kernel_counts(self, runner: Callable[[Tensor], Tensor]) -> dict[str, int] | None:
        """Layers per kernel class in ONNX Runtime's optimised graph of this configuration."""
        if not isinstance(runner, OrtRunner):
            return None
        r = runner.report
        return {"integer": r.integer_layers, "weight_only": r.weight_only_layers,
                "float": r.float_layers}

    def latency_ms(self, runner: Callable[[Tensor], Tensor], example: Tensor) -> float | None:
        from bitsmith.export.ort import interleaved_latency

        if not isinstance(runner, OrtRunner):
            return None
        batch = example if self.latency_batch is None else example[: self.latency_batch]
        timing = interleaved_latency([runner.session], [batch.detach().cpu().numpy()],
                                     runs=self.latency_runs, warmup=self.warmup)[0]
        return float(timing.median_ms)
