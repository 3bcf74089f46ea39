"""Auto-tune the pretrained CIFAR-10 ResNet-20 (issue 3 acceptance), then report on test.

1. 8-bit: Quantune-style int8 space (288 configurations: 4 schemes x 4 clippings x 2
   granularities x 3 calibration sizes x 3 float-layer sets), XGBoost strategy, maximise
   validation accuracy; the best configuration is compared on the 1,000 lossless test
   images with FP32 and with ONNX Runtime's default static quantization
   (``quantize_static`` defaults: QDQ, per-tensor, MinMax) of an ONNX export, calibrated on
   the same 1,000 calibration images. NNCF is not installed and is skipped.
2. Mixed precision: per-layer weight bits {2,3,4,5,6,8,float}, 8-bit activations, min/max
   or MSE clipping; minimise size s.t. validation drop <= 1 point; 100 trials, XGBoost,
   early stopping after 25 % of the validation images. Timed (wall and CPU).
3. The size-accuracy front at about 4, 3.5 and 3 average weight bits on the test images,
   next to naive per-channel round-to-nearest weights with 8-bit activations.

Validation: the first 2,000 JPEG validation images of the protocol (training images);
calibration: the lossless training images; test: only for the final numbers.
Run: python benchmarks/tune_resnet20.py
"""

from __future__ import annotations

import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch

from bitsmith import Policy, QSpec, quantize
from bitsmith.cost import estimate
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.engine import evaluate
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.tune import Objective, SearchSpace, TorchEvaluator, tune

try:
    from benchmarks.common import RESULTS, write_result
except ImportError:  # run as a script from benchmarks/
    from common import RESULTS, write_result

N_VAL = 2000
N_TRIALS = 100


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ort_static_accuracy(model: torch.nn.Module, calib: torch.Tensor, test) -> float:
    """ONNX Runtime quantize_static with its defaults on an ONNX export; test accuracy (%)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i:i + 100].numpy()}
                                 for i in range(0, len(calib), 100)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        fp32, q8 = Path(d) / "m.onnx", Path(d) / "m.q.onnx"
        torch.onnx.export(model.eval(), (calib[:1],), str(fp32), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}},
                          dynamo=False)
        quantize_static(str(fp32), str(q8), Reader())
        sess = ort.InferenceSession(str(q8), providers=["CPUExecutionProvider"])
        correct = total = 0
        for x, y in make_loader(test, batch_size=250):
            logits = sess.run(None, {"input": x.numpy()})[0]
            correct += int((np.argmax(logits, 1) == y.numpy()).sum())
            total += len(y)
    return 100.0 * correct / total


def test_row(name: str, model, policy: Policy, stats, table, test_loader) -> dict:
    acc = evaluate(quantize(model, policy, calibration=stats), test_loader).accuracy
    cost = estimate(table, policy)
    return {"config": name, "test_accuracy": acc, "size_bytes": cost.size_bytes,
            "compression": cost.compression, "avg_weight_bits": cost.avg_weight_bits,
            "bitops": cost.bitops}


def main() -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(0)
    proto = cifar10_protocol()
    val = proto.val
    vx = torch.stack([val[i][0] for i in range(N_VAL)])
    vy = torch.tensor([int(val[i][1]) for i in range(N_VAL)])
    calib = torch.stack([proto.calibration[i][0] for i in range(len(proto.calibration))])
    test = proto.test
    test_loader = make_loader(test, batch_size=250)
    model = load_pretrained_cifar_resnet(20)
    fp32_test = evaluate(model, test_loader).accuracy
    # studies persist here: re-running the script resumes them (finished trials are kept)
    out = Path(tempfile.gettempdir()) / "tune_r20"

    # ---- 1. best 8-bit configuration ------------------------------------------------
    t0, c0 = time.perf_counter(), cpu_seconds()
    ev8 = TorchEvaluator(model, calib, (vx, vy), SearchSpace(), stages=(1.0,))
    r8 = tune(evaluator=ev8, objective=Objective("max_accuracy", budget=float("inf")),
              strategy="xgboost", n_trials=30, out_dir=out / "int8", progress=False)
    t8 = time.perf_counter() - t0
    best8 = r8.best
    n8 = int(best8.config["calib_size"])
    row8 = test_row("best 8-bit (tuned)", model, ev8.policy(best8.config), ev8.stats(n8),
                    ev8.table, test_loader)
    ort_acc = ort_static_accuracy(model, calib[:1000], test)

    # ---- 2. mixed precision within 1 point ------------------------------------------
    t0, c0 = time.perf_counter(), cpu_seconds()
    space = SearchSpace.mixed_precision()
    ev = TorchEvaluator(model, calib, (vx, vy), space, stages=(0.25, 1.0))
    res = tune(evaluator=ev, objective=Objective("min_cost", "size", tolerance=1.0),
               strategy="xgboost", n_trials=N_TRIALS, out_dir=out / "mixed", progress=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    # the study may have been resumed: the trials' own durations cover every run
    trial_seconds = sum(t.seconds or 0.0 for t in res.trials)
    stats = ev.stats(1000)
    best = res.best
    rows = [row8, {"config": "ONNX Runtime quantize_static (defaults)", "test_accuracy": ort_acc}]
    if best is not None:
        rows.append(test_row("best mixed within 1 pt (val)", model, ev.policy(best.config),
                             stats, ev.table, test_loader))

    # ---- 3. front at ~4 / 3.5 / 3 bits vs naive RTN -------------------------------------
    done = [t for t in res.trials if t.state == "COMPLETE" and t.measurement.get("accuracy")]
    for target in (4.0, 3.5, 3.0):
        near = [t for t in done if abs(t.measurement["avg_weight_bits"] - target) <= 0.25]
        if near:
            pick = max(near, key=lambda t: t.measurement["accuracy"])
            label = f"tuned ~{target} bits (val {pick.measurement['accuracy']:.2f}%)"
            rows.append(test_row(label, model, ev.policy(pick.config), stats, ev.table,
                                 test_loader))
    for bits in (4, 3):
        naive = Policy.uniform(ev.layer_names, QSpec("uniform_symmetric", bits, "channel"),
                               QSpec("uniform_asymmetric", 8))
        rows.append(test_row(f"naive RTN W{bits}A8 per-channel", model, naive, stats, ev.table,
                             test_loader))
    for r in rows:
        if "test_accuracy" in r:
            r["drop_vs_fp32"] = fp32_test - r["test_accuracy"]
    lines = [
        f"FP32 test accuracy (1,000 lossless test images): {fp32_test:.2f}%; validation "
        f"({N_VAL} JPEG images) FP32 {ev.fp32_accuracy:.2f}%.",
        f"8-bit search: 30 trials in {t8:.0f} s wall; best {best8.config} "
        f"(val {best8.measurement['accuracy']:.2f}%).",
        f"Mixed-precision search: {N_TRIALS} trials; this run {wall:.0f} s wall, {cpu:.0f} s "
        f"CPU; sum of trial durations over all runs {trial_seconds:.0f} s (2-core machine "
        f"shared with other jobs' processes); counts {res.counts()}.",
        "",
        "| configuration | test acc % | drop | size KiB | compression | avg w bits |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {r['config']} | {r['test_accuracy']:.2f} | {r['drop_vs_fp32']:+.2f} | "
          + (f"{r['size_bytes'] / 1024:.1f} | {r['compression']:.2f}x | "
             f"{r['avg_weight_bits']:.2f} |" if "size_bytes" in r else "- | - | - |")
          for r in rows],
        "",
        "NNCF: not installed, skipped.",
    ]
    write_result("tune_resnet20", {
        "fp32_test_accuracy": fp32_test, "fp32_val_accuracy": ev.fp32_accuracy,
        "val_images": N_VAL, "rows": rows, "int8_best_config": best8.config,
        "int8_search_seconds": t8, "mixed_best_config": None if best is None else best.config,
        "mixed_best_val": None if best is None else best.measurement,
        "mixed_search_wall_seconds": wall, "mixed_search_cpu_seconds": cpu,
        "mixed_trial_seconds_total": trial_seconds,
        "mixed_counts": res.counts(), "n_trials": N_TRIALS, "ort_static_test_accuracy": ort_acc,
        "front_val": [{"trial": t.number, **t.measurement} for t in res.front],
    }, lines)
    (RESULTS / "tune_resnet20_best_policy.yaml").write_text(
        ev.policy(best.config).to_yaml() if best is not None else "")


if __name__ == "__main__":
    main()
