"""Integer-program bit allocation vs the auto-tuner vs uniform, at 4- and 3-bit budgets.

Issue 7 acceptance: on the pretrained CIFAR-10 ResNet-20, the sensitivity-based allocation
(``bitsmith.allocation.ilp``) at 4-bit-average and 3-bit-average weight budgets, compared
on the 1,000 lossless test images with uniform weights and with the tuner's result at the
same size budget.

For each budget (the size of uniform W{4,3}A8, per-channel symmetric weights, scales
included):

* uniform W{b}A8, min/max calibration, without and with bias correction;
* the integer-program allocation from each saved sensitivity estimate (Fisher, measured
  KL; scores from ``results/sensitivity_resnet20.json``), without and with bias correction;
* the tuner (``bitsmith.tune``, objective "max accuracy s.t. size <= budget", XGBoost
  strategy, ``N_TRIALS`` trials), once warm-started with the integer-program allocations
  (enqueued as its first trials) and once cold.

Every configuration is calibrated on the first 1,000 calibration-split images; the tuner
selects on the other 3,000 (lossless, held out); the test images are used only for the
reported numbers.

Run: python benchmarks/ilp_vs_tune.py   (studies persist under $TMPDIR/ilp_vs_tune)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bitsmith import Policy, QSpec
from bitsmith.allocation import allocate, bit_candidates
from bitsmith.cost import Budget
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.engine import evaluate
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.tune import TorchEvaluator, TuneConfig, TuneSpace, run_study

try:
    from benchmarks.common import RESULTS, quiet_tuning, write_result
    from benchmarks.tune_resnet20 import BITS, N_CALIB, test_row
except ImportError:  # run as a script from benchmarks/
    from common import RESULTS, quiet_tuning, write_result
    from tune_resnet20 import BITS, N_CALIB, test_row

N_TRIALS = 24
ESTIMATES = ("fisher", "measured_kl")
BUDGET_BITS = (4, 3)
WEIGHT, ACT = QSpec("uniform_symmetric", 4, "channel"), QSpec("uniform_asymmetric", 8)


def measure(ev: TorchEvaluator, name: str, config: dict, test_loader, *, group: str,
            budget: float, source: str, **extra) -> dict:
    """Validation and test accuracy, size and budget check of one configuration."""
    val_accuracy = ev.evaluate(config).accuracy
    row = test_row(name, ev, config, test_loader, budget=group, source=source,
                   val_accuracy=val_accuracy, **extra)
    return {**row, "within_budget": row["size_bytes"] <= budget}


def main() -> None:
    quiet_tuning(int(os.environ.get("BENCH_THREADS", "1")))
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    proto = cifar10_protocol()
    calib, cy = proto.calibration.tensors()
    test_loader = make_loader(proto.test, batch_size=250)
    model = load_pretrained_cifar_resnet(20)
    fp32_test = evaluate(model, test_loader).accuracy

    space = TuneSpace.from_dict({"preset": "mixed", "weight_bits": list(BITS),
                                   "calib_size": [N_CALIB], "bias_correction": [False, True]})
    held_out = (calib[N_CALIB:], cy[N_CALIB:])
    ev = TorchEvaluator(model, calib[:N_CALIB], held_out, space, stages=(0.25, 1.0))
    saved = json.loads((RESULTS / "sensitivity_resnet20.json").read_text())
    if list(saved["bits"]) != list(BITS):
        raise SystemExit(f"sensitivity_resnet20.json has bits {saved['bits']}, expected "
                         f"{list(BITS)}: re-run benchmarks/sensitivity_resnet20.py")
    cands = bit_candidates(ev.table, WEIGHT, BITS, ACT)
    plain = {"act_clip": "minmax", "weight_clip": "minmax"}
    out = Path(tempfile.gettempdir()) / "ilp_vs_tune"
    rows: list[dict] = []
    studies: list[dict] = []
    for bits in BUDGET_BITS:
        uniform_policy = Policy.uniform(ev.layer_names, WEIGHT.replace(bits=bits), ACT)
        uniform = {**space.config_from_policy(uniform_policy, ev.layer_names), **plain}
        budget = ev.cost(uniform).size_bytes
        group = f"{bits}-bit"

        def add(name: str, config: dict, source: str, **extra) -> None:
            rows.append(measure(ev, name, config, test_loader, group=group,  # noqa: B023
                                budget=budget, source=source, **extra))  # noqa: B023

        for bc in (False, True):
            add(f"uniform W{bits}A8" + (" + bias corr." if bc else ""),
                {**uniform, "bias_correction": bc}, "uniform")
        warm = []
        for est in ESTIMATES:
            t0 = time.perf_counter()
            policy = allocate(cands, saved["sensitivity"][est],
                              Budget(size_bytes=budget)).policy
            ilp_s = time.perf_counter() - t0
            cfg = {**space.config_from_policy(policy, ev.layer_names), **plain}
            for bc in (False, True):
                add(f"ILP {est}" + (" + bias corr." if bc else ""),
                    {**cfg, "bias_correction": bc}, f"ilp:{est}", ilp_seconds=ilp_s)
            warm.append({**cfg, "bias_correction": True})
        for mode, init in (("warm", warm), ("cold", [])):
            t0 = time.perf_counter()
            cfg = TuneConfig(objective="max_accuracy", budget=budget, strategy="xgboost",
                             n_trials=N_TRIALS, progress=False, save_model=False)
            res = run_study(ev, cfg, out_dir=out / f"{group}-{mode}", initial_configs=init)
            wall = time.perf_counter() - t0
            best = res.best
            studies.append({"budget": group, "mode": mode, "wall_seconds": wall,
                            "counts": res.counts(), "best_trial": None if best is None
                            else best.number, "n_warm": len(init)})
            if best is not None:
                add(f"tuner ({mode} start, {N_TRIALS} trials, best trial {best.number})",
                    best.config, f"tune:{mode}", tune_seconds=wall)
            else:
                rows.append({"config": f"tuner ({mode} start)", "budget": group,
                             "source": f"tune:{mode}", "test_accuracy": None,
                             "note": "no feasible configuration found"})
    for r in rows:
        if r.get("test_accuracy") is not None:
            r["drop_vs_fp32"] = fp32_test - r["test_accuracy"]
    load_end = os.getloadavg()[0]
    lines = [
        f"Pretrained ResNet-20, FP32 {fp32_test:.2f}% on the 1,000 lossless test images. "
        f"Calibration: the first {N_CALIB} calibration-split images; validation (what the "
        f"tuner selects on): the other {len(held_out[0])} (FP32 {ev.fp32_accuracy:.2f}%). "
        "Budgets: the size of uniform W4A8 / W3A8 (per-channel symmetric weights, 8-bit "
        "activations, scales and biases included). Integer program: scores from "
        "sensitivity_resnet20.json, candidates per-channel weights at "
        f"{'/'.join(map(str, BITS))} bits. Tuner: XGBoost strategy, {N_TRIALS} trials, "
        "maximise validation accuracy s.t. size <= budget; the warm start enqueues the "
        "integer-program allocations (with bias correction) first.",
        f"Whole run {time.perf_counter() - t_start:.0f} s wall, {torch.get_num_threads()} "
        f"torch thread(s), shared 2-core machine (1-min load {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end).",
        "",
        "| budget | policy | val % | test % | drop | size KiB | avg w bits | within budget |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *[f"| {r['budget']} | {r['config']} | {r.get('val_accuracy', float('nan')):.2f} | "
          f"{r['test_accuracy']:.2f} | {r['drop_vs_fp32']:+.2f} | "
          f"{r['size_bytes'] / 1024:.1f} | {r['avg_weight_bits']:.2f} | "
          f"{'yes' if r['within_budget'] else 'NO'} |"
          if r.get("test_accuracy") is not None else
          f"| {r['budget']} | {r['config']} | - | - | - | - | - | {r['note']} |"
          for r in rows],
        "",
        "Tuner studies: " + "; ".join(
            f"{s['budget']} {s['mode']}: {s['wall_seconds']:.0f} s, {s['counts']}, best trial "
            f"{s['best_trial']}" for s in studies),
    ]
    write_result("ilp_vs_tune", {"fp32_test_accuracy": fp32_test,
                                 "fp32_val_accuracy": ev.fp32_accuracy, "rows": rows,
                                 "studies": studies, "n_trials": N_TRIALS,
                                 "load_average": [load_start, load_end]}, lines)


if __name__ == "__main__":
    main()
