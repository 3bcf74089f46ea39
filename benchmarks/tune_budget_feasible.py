"""Does a budgeted study spend its trials on feasible configurations? (issue 17)

The pretrained CIFAR-10 ResNet-20, the mixed-precision space (per-layer weight bits
2/3/4/5/6/8/float, 8-bit activations, clipping choices), ``max_accuracy`` under a size
budget equal to the uniform 3-bit per-channel policy's size, 30 trials, XGBoost strategy,
seed 0. Calibration: the first 1,000 lossless calibration images; validation: the first
1,000 JPEG validation images (the honest split; the test images are not used). Two
studies, one after the other, identical except for the sampler's repair toward the budget:

* ``repair``: the tuner as it is (``BudgetRepair``: over-budget proposals are moved to the
  nearest configuration within the budget by the allocator's integer program);
* ``no_repair``: the behaviour before issue 17 (over-budget proposals are rejected on their
  analytic cost, unevaluated).

Recorded per study: configurations evaluated, of them within budget, rejected unevaluated,
distinct, best validation accuracy within budget, wall seconds. Run under the shared lock:
``flock /tmp/bitsmith-bench.lock .venv/bin/python -m benchmarks.tune_budget_feasible``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from bitsmith.cost import estimate
from bitsmith.data import cifar10_protocol
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.policy import Policy, QSpec
from bitsmith.tune import TorchEvaluator, TuneConfig, TuneSpace, run_study
from bitsmith.tune import runner as tune_runner
from bitsmith.tune.space import config_key

try:
    from benchmarks.common import quiet_tuning, write_result
except ImportError:  # run as a script from benchmarks/
    from common import quiet_tuning, write_result

N_TRIALS, N_CALIB, N_VAL, SEED, BITS = 30, 1000, 1000, 0, 3


class Counting(TorchEvaluator):
    """Records every configuration it evaluates (the tuner's cost-only rejections skip it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluated: list[dict[str, Any]] = []

    def evaluate(self, config, on_stage=None):
        self.evaluated.append(dict(config))
        return super().evaluate(config, on_stage)


def run(ev: Counting, budget: int, repair: bool) -> dict[str, Any]:
    ev.evaluated.clear()
    original = tune_runner.BudgetRepair.for_study
    if not repair:                      # the pre-issue behaviour: reject, do not repair
        tune_runner.BudgetRepair.for_study = classmethod(lambda cls, e, o: None)
    try:
        t0 = time.perf_counter()
        result = run_study(ev, TuneConfig(objective="max_accuracy", budget=budget,
                                          strategy="xgboost", n_trials=N_TRIALS, seed=SEED,
                                          progress=False))
        seconds = time.perf_counter() - t0
    finally:
        tune_runner.BudgetRepair.for_study = original
    sizes = [ev.cost(c).size_bytes for c in ev.evaluated]
    feasible = sum(s <= budget for s in sizes)
    done = [t for t in result.trials if t.state in ("COMPLETE", "PRUNED")]   # finished
    best = result.best.measurement if result.best is not None else None
    return {"trials": len(result.trials), "counts": result.counts(),
            "evaluated": len(ev.evaluated), "evaluated_within_budget": feasible,
            "rejected_unevaluated": len(done) - len(ev.evaluated),
            "distinct_evaluated": len({config_key(c) for c in ev.evaluated}),
            "best_val_accuracy": None if best is None else best["accuracy"],
            "best_size_bytes": None if best is None else best["size_bytes"],
            "best_avg_weight_bits": None if best is None else best["avg_weight_bits"],
            "seconds": round(seconds, 1)}


def main() -> None:
    quiet_tuning(threads=2)
    proto = cifar10_protocol()
    net = load_pretrained_cifar_resnet(20)
    calib = proto.calibration.subset(list(range(N_CALIB)), name="cifar10-calib-1000")
    val = proto.val.subset(list(range(N_VAL)), name="cifar10-val-jpeg-1000")
    ev = Counting(net, calib, val, TuneSpace.mixed_precision(), stages=(0.25, 1.0))
    uniform = Policy.uniform(ev.layer_names, QSpec("uniform_symmetric", BITS, "channel"),
                             QSpec("uniform_asymmetric", 8))
    budget = estimate(ev.table, uniform).size_bytes
    load_before = os.getloadavg()
    studies = {"repair": run(ev, budget, True), "no_repair": run(ev, budget, False)}
    payload = {"model": "ResNet-20 (pretrained, CIFAR-10)", "budget_bytes": budget,
               "budget": f"size of the uniform {BITS}-bit per-channel W / 8-bit A policy",
               "n_trials": N_TRIALS, "strategy": "xgboost", "seed": SEED,
               "calibration": f"first {N_CALIB} lossless calibration images",
               "validation": f"first {N_VAL} JPEG validation images",
               "fp32_val_accuracy": ev.fp32_accuracy, "studies": studies,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "torch_threads": torch.get_num_threads()}
    lines = [f"ResNet-20, max accuracy under a {BITS}-bit size budget ({budget:,} bytes), "
             f"{N_TRIALS} trials, XGBoost, seed {SEED}; validation = first {N_VAL} JPEG "
             f"validation images (FP32 {ev.fp32_accuracy:.2f}%).", "",
             "| study | evaluated | within budget | rejected unevaluated | distinct | "
             "best val acc % | best avg w bits | seconds |", "|---|---|---|---|---|---|---|---|"]
    for name, s in studies.items():
        acc = "-" if s["best_val_accuracy"] is None else f"{s['best_val_accuracy']:.2f}"
        bits = "-" if s["best_avg_weight_bits"] is None else f"{s['best_avg_weight_bits']:.2f}"
        lines.append(f"| {name} | {s['evaluated']} | {s['evaluated_within_budget']} | "
                     f"{s['rejected_unevaluated']} | {s['distinct_evaluated']} | {acc} | "
                     f"{bits} | {s['seconds']} |")
    lines += ["", f"Load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} "
              f"(shared 2-core machine); torch threads {torch.get_num_threads()}."]
    write_result("tune_budget_feasible", payload, lines)


if __name__ == "__main__":
    main()
