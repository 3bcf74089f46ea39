"""ONNX Runtime helpers: sessions with fixed threads, batched runs, interleaved latency medians.

Latency is measured the way noisy shared machines allow: every model under
comparison runs once per round (interleaved, in a random order per round so that
none always follows the same other model), for many rounds after warm-up, and
the **median** per model is reported; speedups are ratios of medians from the
same run. Sessions use ``intra_op_num_threads`` threads,
one inter-op thread and sequential execution.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def make_session(model: str | Path | bytes, threads: int = 2, optimize: bool = True):
    """A CPU ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads, sequential."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8, "tensor(float16)": np.float16,
               "tensor(double)": np.float64}


def input_dtype(session_input) -> type:
    """The numpy dtype an ONNX Runtime session input expects (float32 if unknown)."""
    return _ORT_DTYPES.get(session_input.type, np.float32)


def run(session, inputs: Sequence[np.ndarray], outputs: list[str] | None = None
        ) -> list[np.ndarray]:
    """Run ``session`` on positional ``inputs``, each cast to the dtype its input declares
    (float32 images, int64 token ids, ...)."""
    feed: dict[str, np.ndarray] = {i.name: np.ascontiguousarray(x, dtype=input_dtype(i))
            for i, x in zip(session.get_inputs(), inputs)}
    return session.run(outputs, feed)


def tensor_ranges(model_bytes: bytes, names: list[str], batches: Iterable[Sequence[np.ndarray]],
                  threads: int = 2, observer: str = "minmax") -> dict[str, tuple[float, float]]:
    """Calibrated ``(lo, hi)`` of each tensor ``names`` over ``batches`` (model must output them).

    ``observer`` is one of bitsmith's observers (``minmax``, ``percentile``, ``entropy``,
    ``mse``), applied per tensor for an 8-bit asymmetric grid.
    """
    import torch

    from bitsmith.calibrate import TensorStats, compute_range

    session = make_session(model_bytes, threads, optimize=False)
    stats = {n: TensorStats() for n in names}
    for batch in batches:
        for name, value in zip(names, run(session, batch, names)):
            stats[name].update(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    missing = [n for n in names if stats[n].is_empty]
    if missing:
        raise ValueError(f"no calibration data reached {missing[:3]}")
    out = {}
    for n in names:
        lo, hi = compute_range(stats[n], observer, 8, symmetric=False, per_channel=False)
        out[n] = (float(lo), float(hi))
    return out


@dataclass(frozen=True)
class Timing:
    """Latency of one model at one batch size: milliseconds per call, over ``runs`` calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch: int

    @property
    def throughput(self) -> float:
        """Examples per second at the median latency."""
        return self.batch / (self.median_ms / 1000.0)

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "runs": self.runs, "batch": self.batch, "throughput_per_s": self.throughput}


def interleaved_latency(sessions: Sequence, inputs: Sequence, runs: int = 100,
                        warmup: int = 10, per_session: bool = False, seed: int = 0
                        ) -> list[Timing]:
    """Time ``sessions`` interleaved round by round (median of ``runs``); one Timing each.

    Each round runs every session once, in a random order (seeded).

    ``inputs`` are the positional inputs shared by all sessions, or with ``per_session``
    one list of inputs per session.
    """
    per = list(inputs) if per_session else [inputs] * len(sessions)
    feeds = [{i.name: x for i, x in zip(s.get_inputs(), ins)} for s, ins in zip(sessions, per)]
    inputs = per[0]
    for _ in range(warmup):
        for s, feed in zip(sessions, feeds):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    order = np.random.default_rng(seed)
    for _ in range(runs):
        # a fresh order each round: no model always runs right after the same other one
        # (e.g. after FP32 evicted the caches)
        for k in order.permutation(len(sessions)):
            s, feed = sessions[k], feeds[k]
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1000.0)
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].ndim else 1
    out = []
    for t in times:
        q = statistics.quantiles(t, n=10) if len(t) >= 2 else [t[0]] * 9
        out.append(Timing(statistics.median(t), q[0], q[-1], len(t), batch))
    return out
