"""Per-layer sensitivity and budgeted bit allocation on the pretrained ResNet-20 (issue 7).

1. Sensitivity of every (layer, weight bits) pair, bits in {2,3,4,5,6,8}
   (per-channel symmetric weights, 8-bit activations), on the first 1,000 JPEG
   validation images: measured (one layer quantized at a time: KL, loss,
   accuracy) and estimated (HAWQ-V2 Hessian trace on 256 images, empirical
   Fisher on 1,000 images), each with its wall-clock time.
2. Spearman rank correlation of each estimate with the measured scores, pooled over
   all (layer, bits) pairs and per bit width across layers.
3. Integer-program allocation at the size of uniform W4A8 and W3A8 (4- and 3-bit
   average weight budgets) for each score, against uniform, reported on the 1,000
   lossless test images (never used for a decision).

Writes results/sensitivity_resnet20.json and .md, and a run directory with the HTML
report (default runs/sensitivity_resnet20, not committed).

Run: python benchmarks/sensitivity_resnet20.py [--run-dir runs/sensitivity_resnet20]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import Subset

from bitsmith import Policy, QSpec, collect_stats, prepare, quantize
from bitsmith.allocation import (
    allocate,
    bit_candidates,
    per_choice_correlation,
    rank_correlation,
    size_budget,
)
from bitsmith.cost import Budget
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.engine import evaluate
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.report import write_report
from bitsmith.rundir import RunWriter
from bitsmith.sensitivity import estimate_fisher, estimate_hessian, measure_sensitivity

try:
    from benchmarks.common import write_result
except ImportError:  # run as a script from benchmarks/
    from common import write_result

BITS = (2, 3, 4, 5, 6, 8)
WEIGHT = QSpec("uniform_symmetric", 4, "channel")
ACT = QSpec("uniform_asymmetric", 8)
ESTIMATES = ("hessian", "fisher", "fisher_diag")
MEASURED = ("measured_kl", "measured_loss", "measured_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", default="runs/sensitivity_resnet20")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--hessian-images", type=int, default=256)
    parser.add_argument("--hessian-iters", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]

    proto = cifar10_protocol(n_calib=512)
    calib = make_loader(proto.calibration, batch_size=128)
    val = make_loader(Subset(proto.val, range(args.val_images)), batch_size=250)
    test = make_loader(proto.test, batch_size=250)
    model = load_pretrained_cifar_resnet(20)
    stats = collect_stats(model, calib)
    _, table, _ = prepare(model, stats.example_inputs)
    space = bit_candidates(table, WEIGHT, BITS, ACT)

    sens = measure_sensitivity(model, space, val, calibration=stats, progress=True)
    sens = sens.merge(estimate_hessian(model, space, val, n_iter=args.hessian_iters,
                                       max_examples=args.hessian_images, progress=True))
    sens = sens.merge(estimate_fisher(model, space, val, progress=True))

    corr = {}
    for est in ESTIMATES:
        corr[est] = {}
        for ref in ("measured_kl", "measured_loss"):
            per_bits = per_choice_correlation(sens, est, ref)
            corr[est][ref] = {"pooled": rank_correlation(sens, est, ref, "all"),
                              "mean_per_bits": rank_correlation(sens, est, ref, "choice"),
                              "per_bits": {str(BITS[i]): r for i, r in per_bits.items()}}
    corr["measured_loss"] = {"measured_kl": {
        "pooled": rank_correlation(sens, "measured_loss", "measured_kl", "all"),
        "mean_per_bits": rank_correlation(sens, "measured_loss", "measured_kl", "choice")}}

    run = RunWriter(args.run_dir, model="ResNet-20 (pretrained)", dataset="CIFAR-10",
                    eval_set="1,000 lossless CIFAR-10 test images",
                    producer="benchmarks/sensitivity_resnet20.py")
    run.write_layers(table)
    run.write_sensitivity(sens)
    fp32 = evaluate(model, test).accuracy
    run.set_fp32(accuracy=fp32)
    run.add_trial("FP32", policy=Policy({}), accuracy=fp32, source="float")

    def test_acc(policy: Policy) -> float:
        return evaluate(quantize(model, policy, calibration=stats), test).accuracy

    rows = []
    for b in (4, 3):
        budget = size_budget(space, b)
        uni = Policy.uniform(table.names, WEIGHT.replace(bits=b), ACT)
        acc = test_acc(uni)
        run.add_trial(f"uniform W{b}A8", policy=uni, accuracy=acc, source="uniform")
        rows.append({"budget_bits": b, "method": "uniform", "accuracy": acc,
                     "size_bytes": budget, "avg_weight_bits": float(b), "solve_seconds": 0.0,
                     "analysis_seconds": 0.0, "bits": [b] * len(table)})
        for metric in ("measured_kl", "measured_loss", *ESTIMATES):
            alloc = allocate(space, sens, Budget(size_bytes=budget), metric=metric)
            acc = test_acc(alloc.policy)
            run.add_trial(f"ILP {b}-bit ({metric})", policy=alloc.policy, accuracy=acc,
                          source=f"ilp:{metric}")
            rows.append({"budget_bits": b, "method": f"ILP {metric}", "accuracy": acc,
                         "size_bytes": alloc.size_bytes, "avg_weight_bits": alloc.avg_weight_bits,
                         "solve_seconds": alloc.seconds, "analysis_seconds": sens.seconds[metric],
                         "bits": [alloc.policy[n].weight.bits for n in table.names]})
    run.choose("ILP 3-bit (measured_kl)")
    report = write_report(args.run_dir)

    load_end = os.getloadavg()[0]

    def fmt(r: float) -> str:
        return f"{r:+.3f}"

    lines = [
        f"Pretrained ResNet-20, FP32 **{fp32:.2f}%** on the 1,000 lossless test images. "
        f"Candidates: per-channel symmetric weights at {BITS} bits x 8-bit activations, "
        f"{len(table)} layers ({space.size} pairs). Sensitivity data: the first "
        f"{args.val_images} JPEG validation images (Hessian: {args.hessian_images} of them, "
        f"{args.hessian_iters} Hutchinson iterations). {torch.get_num_threads()} CPU threads; "
        f"the 2-core machine was shared (1-min load average {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end), so times are upper bounds.",
        "",
        "## Cost of each sensitivity method",
        "",
        "| method | seconds | what it computes |",
        "|---|---:|---|",
        f"| measured (KL, loss, accuracy in one pass) | {sens.seconds['measured_kl']:.1f} | "
        f"{space.size + 1} quantize + evaluate on {args.val_images} images |",
        f"| hessian (HAWQ-V2) | {sens.seconds['hessian']:.1f} | Hutchinson Tr(H) x "
        "||Q(W)-W||^2 |",
        f"| fisher + fisher_diag (one pass) | {sens.seconds['fisher']:.1f} | per-example "
        "gradients |",
        "",
        "## Spearman rank correlation with the measured sensitivity",
        "",
        "| estimate | vs measured KL (all pairs) | vs KL (per bits, mean) | "
        "vs measured loss (all pairs) | vs loss (per bits, mean) |",
        "|---|---:|---:|---:|---:|",
        *[f"| {est} | {fmt(corr[est]['measured_kl']['pooled'])} | "
          f"{fmt(corr[est]['measured_kl']['mean_per_bits'])} | "
          f"{fmt(corr[est]['measured_loss']['pooled'])} | "
          f"{fmt(corr[est]['measured_loss']['mean_per_bits'])} |" for est in ESTIMATES],
        "",
        "Per bit width (across the layers), vs measured KL: " + "; ".join(
            f"{est}: " + ", ".join(f"{b}b {fmt(r)}" for b, r in
                                   corr[est]["measured_kl"]["per_bits"].items())
            for est in ESTIMATES),
        "",
        "## Allocation vs uniform (same size budget), 1,000 test images",
        "",
        "| budget | method | accuracy % | size KiB | avg w bits | bits per layer |",
        "|---|---|---:|---:|---:|---|",
        *[f"| {r['budget_bits']}-bit | {r['method']} | {r['accuracy']:.2f} | "
          f"{r['size_bytes'] / 1024:.1f} | {r['avg_weight_bits']:.2f} | "
          f"{''.join(str(b) if b < 10 else 'f' for b in r['bits'])} |" for r in rows],
        "",
        "Bits per layer in execution order (conv1, layer1.0.conv1, ..., linear). "
        f"The report of this run: {report}.",
    ]
    write_result("sensitivity_resnet20", {
        "fp32_accuracy": fp32, "bits": list(BITS), "layers": table.names,
        "val_images": args.val_images, "hessian_images": args.hessian_images,
        "hessian_iters": args.hessian_iters, "seconds": sens.seconds,
        "load_average": {"start": load_start, "end": load_end},
        "spearman": corr, "allocations": rows,
        "sensitivity": sens.scores,
        "hessian_trace": sens.meta.get("hessian_trace"),
        "hessian_trace_stderr": sens.meta.get("hessian_trace_stderr"),
    }, lines)


if __name__ == "__main__":
    main()
