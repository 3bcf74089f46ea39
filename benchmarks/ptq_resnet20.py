"""Post-training quantization of the pretrained CIFAR-10 ResNet-20 (issue: foundation).

FP32 vs W8A8 (per-channel weights) with each activation observer, and naive
per-channel round-to-nearest weights at 4 and 3 bits with 8-bit activations.
Calibration: 512 lossless training images; report: the 1,000 lossless test
images (SOURCES.md protocol). Writes results/ptq_resnet20.json and .md.

Run: python benchmarks/ptq_resnet20.py
"""

from __future__ import annotations

import time

import torch

from bitsmith import Policy, QSpec, collect_stats, prepare, quantize
from bitsmith.cost import estimate
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.engine import evaluate
from bitsmith.models import load_pretrained_cifar_resnet

try:
    from benchmarks.common import write_result
except ImportError:  # run as a script from benchmarks/
    from common import write_result


def main() -> None:
    torch.manual_seed(0)
    proto = cifar10_protocol(n_calib=512)
    calib = make_loader(proto.calibration, batch_size=128)
    test = make_loader(proto.test, batch_size=250)
    model = load_pretrained_cifar_resnet(20)

    t0 = time.perf_counter()
    stats = collect_stats(model, calib)
    collect_s = time.perf_counter() - t0
    _, table, _ = prepare(model, stats.example_inputs)
    fp32 = evaluate(model, test).accuracy

    configs: dict[str, Policy] = {}
    w8 = QSpec("uniform_symmetric", 8, "channel")
    for obs in ("minmax", "percentile", "entropy", "mse"):
        configs[f"W8A8 act={obs}"] = Policy.uniform(
            table.names, w8, QSpec("uniform_asymmetric", 8, observer=obs))
    for bits in (4, 3):
        configs[f"W{bits}A8 naive RTN per-channel"] = Policy.uniform(
            table.names, QSpec("uniform_symmetric", bits, "channel"),
            QSpec("uniform_asymmetric", 8))
        configs[f"W{bits}A8 per-channel MSE clipping"] = Policy.uniform(
            table.names, QSpec("uniform_symmetric", bits, "channel", observer="mse"),
            QSpec("uniform_asymmetric", 8))

    rows = []
    for name, policy in configs.items():
        t1 = time.perf_counter()
        acc = evaluate(quantize(model, policy, calibration=stats), test).accuracy
        cost = estimate(table, policy)
        rows.append({"config": name, "accuracy": acc, "drop": fp32 - acc,
                     "size_bytes": cost.size_bytes, "compression": cost.compression,
                     "bitops": cost.bitops, "seconds": time.perf_counter() - t1})
    best8 = max((r for r in rows if r["config"].startswith("W8A8")), key=lambda r: r["accuracy"])
    default8 = rows[0]
    lines = [
        f"FP32 accuracy on the 1,000 lossless test images: **{fp32:.2f}%** "
        "(SOURCES.md: 91.50%)",
        f"Calibration statistics gathered once on 512 images in {collect_s:.1f} s and "
        "reused by every configuration.",
        "",
        "| config | accuracy % | drop | size KiB | compression | GBitOPs |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {r['config']} | {r['accuracy']:.2f} | {r['drop']:+.2f} | "
          f"{r['size_bytes'] / 1024:.1f} | {r['compression']:.2f}x | {r['bitops'] / 1e9:.2f} |"
          for r in rows],
        "",
        f"W8A8 default (min/max) drop: {default8['drop']:.2f} points; best W8A8 "
        f"({best8['config']}) drop: {best8['drop']:.2f} points (acceptance: <= 0.3).",
    ]
    write_result("ptq_resnet20", {
        "fp32_accuracy": fp32, "test_images": 1000, "calibration_images": 512,
        "stats_seconds": collect_s, "rows": rows,
        "w8a8_default_within_0.3": default8["drop"] <= 0.3,
    }, lines)


if __name__ == "__main__":
    main()
