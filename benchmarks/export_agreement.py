"""ONNX Runtime vs the simulation, and vs the simulation of the export, on pretrained models.

The default ONNX export (integer chains) quantizes more than the PyTorch simulation does:
uint8 points on layer outputs before residual adds, on residual adds and pooling, and int32
biases (:mod:`bitsmith.export.runtime_sim`). This benchmark measures how much of ONNX
Runtime's deviation from the simulation those account for, on the pretrained CIFAR-10
ResNet-20 and ResNet-32: per export, top-1 agreement and logit errors of ONNX Runtime's
optimised graph against (a) the simulation ``quantize`` returns and (b)
:func:`~bitsmith.export.runtime_simulation` of the export, plus the three accuracies; and
ONNX Runtime against itself (:func:`~bitsmith.export.compare_onnx_optimisation`: the
optimised session vs the unoptimised one, float ops between the same Q/DQ pairs): what
float rounding alone changes, the reference for any simulation's agreement.

Exports: W8A8 (per-channel int8 weights, uint8 activations) with int8 residuals (default)
and with float residuals, and the mixed 2-8-bit Policy of ``export_resnet20.py``.
Data (``shared/data/SOURCES.md`` protocol): calibration on 512 lossless training images;
evaluation on the 5,000-image JPEG validation split and on the 1,000 lossless test images.
No timing: agreement only (deterministic given the ONNX Runtime build).

Run: ``python -m benchmarks.export_agreement``; writes results/export_agreement.{json,md}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.export import (
    compare_onnx,
    compare_onnx_optimisation,
    export_onnx,
    runtime_simulation,
)
from bitsmith.models import load_pretrained_cifar_resnet

from .common import write_result
from .export_resnet20 import mixed_policy

THREADS = 2
W8A8 = (QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8))


def _exports(names: list[str]) -> dict[str, tuple[Policy, dict[str, Any]]]:
    w8a8 = Policy.uniform(names, *W8A8)
    return {"W8A8, int8 residuals (default)": (w8a8, {}),
            "W8A8, float residuals": (w8a8, {"integer_residuals": False}),
            "mixed 2-8-bit weights, A8": (mixed_policy(names), {})}


def measure(depth: int, proto, tmp: Path) -> list[dict[str, Any]]:
    """One row per export of the pretrained ResNet-``depth``."""
    model = load_pretrained_cifar_resnet(depth).eval()
    calib = make_loader(proto.calibration, batch_size=64)
    splits = {"val (JPEG, 5,000)": make_loader(proto.val, batch_size=250),
              "test (lossless, 1,000)": make_loader(proto.test, batch_size=250)}
    stats = bitsmith.collect_stats(model, calib)
    example = stats.example_inputs[0]
    _, table, _ = bitsmith.prepare(model, example)
    rows = []
    for label, (policy, kwargs) in _exports(table.names).items():
        qmodel = bitsmith.quantize(model, policy, calibration=stats)
        path = tmp / f"resnet{depth}.onnx"
        t0 = time.perf_counter()
        report = export_onnx(qmodel, path, example, calibration=calib, **kwargs)
        export_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        modelled = runtime_simulation(qmodel, report)
        build_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "model": f"resnet{depth}", "export": label,
            "export_seconds": export_seconds, "runtime_simulation_seconds": build_seconds,
            **report.runtime_counts(),
            "max_match_error": max((p.match_error for p in report.runtime_points), default=0.0),
            "splits": {}}
        for split, data in splits.items():
            row["splits"][split] = {
                "vs_simulation": compare_onnx(qmodel, path, data, THREADS).to_dict(),
                "vs_runtime_simulation": compare_onnx(modelled, path, data, THREADS).to_dict(),
                "runtime_vs_itself": compare_onnx_optimisation(path, data, THREADS).to_dict()}
        rows.append(row)
        print(label, {s: (v["vs_simulation"]["top1_agreement"],
                          v["vs_runtime_simulation"]["top1_agreement"])
                      for s, v in row["splits"].items()}, flush=True)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "ONNX Runtime (optimised graph, integer kernels) against the simulation `quantize` "
        "returns and against the simulation of the export (`runtime_simulation`: the "
        "integer chains' uint8 points and the int32 biases added). Agreement: top-1 over "
        "the split; logit errors absolute (max / mean). ORT vs itself: the optimised session "
        "against the unoptimised one (graph optimisations off: float ops between the same "
        "Q/DQ pairs), which differ only in float rounding: no simulation can agree more "
        "closely.",
        "",
        "| model | export | split | points (unmatched) / int32 biases | ORT vs sim: agree, "
        "max / mean err | ORT vs sim of the export: agree, max / mean err | "
        "ORT vs itself: agree, max / mean err | accuracy ORT / sim / sim of the export |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for split, v in r["splits"].items():
            a, b, c = v["vs_simulation"], v["vs_runtime_simulation"], v["runtime_vs_itself"]
            lines.append(
                f"| {r['model']} | {r['export']} | {split} | {r['runtime_points']} "
                f"({r['unmatched_points']}) / {r['int32_bias_layers']} | "
                f"{a['top1_agreement']:.2f}%, {a['max_abs_error']:.3g} / "
                f"{a['mean_abs_error']:.3g} | {b['top1_agreement']:.2f}%, "
                f"{b['max_abs_error']:.3g} / {b['mean_abs_error']:.3g} | "
                f"{c['top1_agreement']:.2f}%, {c['max_abs_error']:.3g} / "
                f"{c['mean_abs_error']:.3g} | "
                f"{a['onnx_accuracy']:.2f}% / {a['torch_accuracy']:.2f}% / "
                f"{b['torch_accuracy']:.2f}% |")
    return lines


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    proto = cifar10_protocol(n_calib=512)
    with tempfile.TemporaryDirectory(prefix="bitsmith_agreement_") as tmp:
        rows = measure(20, proto, Path(tmp)) + measure(32, proto, Path(tmp))
    write_result("export_agreement", {"threads": THREADS, "rows": rows}, _markdown(rows))


if __name__ == "__main__":
    main()
