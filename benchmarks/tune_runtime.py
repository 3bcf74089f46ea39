"""Runtime-aware tuning of the pretrained ResNet-20 on ONNX Runtime (CPU): what the tuner
finds when accuracy is measured on the integer runtime and latency is the second objective.

Space (12 configurations, grid): weight/activation scheme {asymmetric, symmetric_uint8,
symmetric} x weight granularity {tensor, channel} x ``reduced_range`` weights {no, yes};
8-bit, min/max clipping, 1,000 calibration images. Each configuration is exported with
``bitsmith.export.export_onnx`` (u8s8 QDQ: ONNX Runtime's QLinearConv / QLinearAdd / QGemm;
the exporter has no s8s8 form) and run in ONNX Runtime: accuracy on the first 1,000 JPEG
validation images, latency = median of 30 runs of a batch of 64, 1 intra-op thread. The
same configurations are also scored by the PyTorch simulation (no latency) for comparison,
and the FP32 ONNX model is timed the same way. Objective: Pareto front of accuracy vs
latency. No test image is used.

Run: python benchmarks/tune_runtime.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bitsmith.data import cifar10_protocol
from bitsmith.export import export_fp32_onnx
from bitsmith.export.ort import interleaved_latency, make_session
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.tune import TorchEvaluator, TuneConfig, TuneSpace, run_study
from bitsmith.tune.runtime import OnnxRuntimeBackend

try:
    from benchmarks.common import quiet_tuning, write_result
except ImportError:  # run as a script from benchmarks/
    from common import quiet_tuning, write_result

N_VAL = 1000
BATCH = 64
RUNS = 30


def main() -> None:
    quiet_tuning(1)
    load_start = os.getloadavg()[0]
    proto = cifar10_protocol()
    vx, vy = proto.val.tensors(range(N_VAL))
    calib, _ = proto.calibration.tensors(range(1000))
    model = load_pretrained_cifar_resnet(20)
    space = TuneSpace.from_dict({
        "scheme": ["asymmetric", "symmetric_uint8", "symmetric"], "act_clip": ["minmax"],
        "weight_clip": ["minmax"], "granularity": ["tensor", "channel"],
        "calib_size": [1000], "float_layers": ["none"], "reduced_range": [False, True]})
    backend = OnnxRuntimeBackend(threads=1, latency_runs=RUNS, warmup=5, latency_batch=BATCH)
    ev = TorchEvaluator(model, calib, (vx, vy), space, stages=(1.0,), batch_size=250,
                        backend=backend)
    sim = TorchEvaluator(model, calib, (vx, vy), space, stages=(1.0,), batch_size=250)
    t0 = time.perf_counter()
    res = run_study(ev, TuneConfig(objective="pareto", metric="latency", strategy="grid",
                                   n_trials=space.size(ev.layer_names), progress=False,
                                   save_model=False))
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = export_fp32_onnx(model, Path(d) / "fp32.onnx", calib[:1])
        fp32_ms = interleaved_latency([make_session(path, 1)], [vx[:BATCH].numpy()],
                                      runs=RUNS, warmup=5)[0].median_ms
    rows = []
    front = {t.number for t in res.front}
    for t in sorted((t for t in res.trials if t.state == "COMPLETE"),
                    key=lambda t: t.measurement["latency_ms"]):
        m = t.measurement
        rows.append({"trial": t.number, "scheme": t.config["scheme"],
                     "granularity": t.config["granularity"],
                     "reduced_range": t.config["reduced_range"],
                     "ort_accuracy": m["accuracy"], "sim_accuracy": sim.evaluate(t.config).accuracy,
                     "latency_ms": m["latency_ms"], "speedup_vs_fp32": fp32_ms / m["latency_ms"],
                     "pareto": t.number in front, "seconds": m["seconds"]})
    load_end = os.getloadavg()[0]
    lines = [
        f"ResNet-20, {N_VAL} JPEG validation images (FP32 {ev.fp32_accuracy:.2f}%), 8-bit, "
        f"latency: median of {RUNS} runs of a batch of {BATCH}, 1 thread; FP32 ONNX "
        f"{fp32_ms:.2f} ms. {len(rows)} configurations in {seconds:.0f} s (export + ONNX "
        f"Runtime evaluation + timing each). 1-min load average {load_start:.1f} -> "
        f"{load_end:.1f} (2-core machine shared with other jobs: latencies of configurations "
        "measured at different times; differences of a few % are noise).",
        "",
        "| scheme | weights | reduced_range | ORT acc % | simulated acc % | latency ms | "
        "speedup vs FP32 | Pareto |",
        "|---|---|---|---:|---:|---:|---:|---|",
        *[f"| {r['scheme']} | {r['granularity']} | {r['reduced_range']} | "
          f"{r['ort_accuracy']:.2f} | {r['sim_accuracy']:.2f} | {r['latency_ms']:.2f} | "
          f"{r['speedup_vs_fp32']:.2f}x | {'yes' if r['pareto'] else ''} |" for r in rows],
    ]
    write_result("tune_runtime", {"fp32_val_accuracy": ev.fp32_accuracy, "val_images": N_VAL,
                                  "batch": BATCH, "runs": RUNS, "fp32_latency_ms": fp32_ms,
                                  "rows": rows, "seconds": seconds,
                                  "load_average": [load_start, load_end]}, lines)


if __name__ == "__main__":
    main()
