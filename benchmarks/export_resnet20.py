"""Deployment of the pretrained CIFAR-10 ResNet-20 (issue 6): ONNX Runtime speed, agreement, size.

1. W8A8 (per-channel int8 weights, uint8 activations): export to ONNX QDQ, compare with the
   PyTorch simulation on the 1,000 lossless test images (top-1 agreement, logit error) and
   time FP32 vs quantized ONNX at batch 1 and 64 with 2 threads (interleaved medians, one
   run, ratios). Variants: full vs reduced (7-bit) weight range; integer vs float residual
   adds; simulation points only; ONNX Runtime's own ``quantize_static`` (u8s8, QDQ,
   per-channel, reduce_range) as a reference.
2. A mixed 2-8-bit Policy at about 4 average weight bits: packed artifact size vs the cost
   model and the FP32 state dict; bit-identical reload; its ONNX export runs too.

Calibration: 512 lossless training images. Writes results/export_resnet20.json and .md.
Run: python benchmarks/export_resnet20.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.cost import estimate
from bitsmith.data import cifar10_protocol, make_loader
from bitsmith.engine import evaluate
from bitsmith.export import compare_onnx, export_fp32_onnx, export_onnx, load_packed, save_packed
from bitsmith.export.pipeline import state_dict_bytes, time_models
from bitsmith.models import load_pretrained_cifar_resnet

try:
    from benchmarks.common import write_result
except ImportError:  # run as a script from benchmarks/
    from common import write_result

THREADS = 2
RUNS_B1, RUNS_B64 = 500, 40
BLOCKS = 3  # independent interleaved timing blocks; reported: median over blocks


def ort_static(fp32_path: Path, out: Path, calib: list[np.ndarray]) -> Path:
    """ONNX Runtime's own static quantization (reference): QDQ, u8s8, per-channel, reduced."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, reduce_range=True)
    return out


def ort_agreement(path: Path, qmodel: torch.nn.Module, test) -> dict:
    return compare_onnx(qmodel, path, test, THREADS).to_dict()


def mixed_policy(names: list[str]) -> Policy:
    """First/last layer 8-bit; the others cycle 2,3,4,5,6 bits (per-channel MSE weights)."""
    cycle = [4, 3, 5, 2, 6, 4, 3, 5, 4, 3, 4, 5, 2, 4, 3, 6, 4, 3]
    layers = {}
    for i, name in enumerate(names):
        bits = 8 if i in (0, len(names) - 1) else cycle[(i - 1) % len(cycle)]
        layers[name] = LayerSpec(QSpec("uniform_symmetric", bits, "channel", observer="mse"),
                                 QSpec("uniform_asymmetric", 8))
    return Policy(layers)


def main() -> None:
    torch.manual_seed(0)
    proto = cifar10_protocol(n_calib=512)
    calib = make_loader(proto.calibration, batch_size=64)
    test = make_loader(proto.test, batch_size=250)
    model = load_pretrained_cifar_resnet(20).eval()
    stats = bitsmith.collect_stats(model, calib)
    example = stats.example_inputs[0]
    _, table, _ = bitsmith.prepare(model, example)
    fp32_acc = evaluate(model, test).accuracy
    tmp = Path(tempfile.mkdtemp(prefix="bitsmith_export_"))
    fp32_path = export_fp32_onnx(model, tmp / "fp32.onnx", example)

    variants: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    qmodels = {}
    for rr in (False, True):
        pol = Policy.uniform(table.names, QSpec("uniform_symmetric", 8, "channel",
                                                reduced_range=rr),
                             QSpec("uniform_asymmetric", 8))
        qmodels[rr] = bitsmith.quantize(model, pol, calibration=stats)
    configs = {
        "bitsmith W8A8 (int8 residuals)": (False, {}),
        "bitsmith W8A8 reduced range (int8 residuals)": (True, {}),
        "bitsmith W8A8 (float residuals)": (False, {"integer_residuals": False}),
        "bitsmith W8A8 (simulation points only)": (False, {"integer_outputs": False}),
    }
    for label, (rr, kw) in configs.items():
        path = tmp / f"{len(paths)}.onnx"
        t0 = time.perf_counter()
        rep = export_onnx(qmodels[rr], path, example, calibration=calib, **kw)
        variants[label] = {"export_seconds": time.perf_counter() - t0,
                           "onnx_bytes": rep.file_bytes, "integer_layers": rep.integer_layers,
                           "calibrated_points": len(rep.calibrated_points),
                           "agreement": ort_agreement(path, qmodels[rr], test)}
        paths[label] = path
    calib_np = [x.numpy() for x, _ in make_loader(proto.calibration, batch_size=64)]
    ref_label = "ONNX Runtime quantize_static (u8s8, per-channel, reduce_range)"
    paths[ref_label] = ort_static(fp32_path, tmp / "ort_static.onnx", calib_np)
    variants[ref_label] = {"onnx_bytes": paths[ref_label].stat().st_size,
                           "agreement": ort_agreement(paths[ref_label], qmodels[True], test)}

    labels = ["FP32", *paths]
    blocks = [time_models([fp32_path, *paths.values()], tuple(example.shape[1:]), (1, 64),
                          RUNS_B1, THREADS, RUNS_B64) for _ in range(BLOCKS)]
    for b in (1, 64):
        fp32_block = [blk[b][0]["median_ms"] for blk in blocks]
        for k, label in enumerate(labels):
            medians = [blk[b][k]["median_ms"] for blk in blocks]
            speedups = [f / m for f, m in zip(fp32_block, medians)]
            variants.setdefault(label, {})[f"batch{b}"] = {
                "median_ms": statistics.median(medians), "block_medians_ms": medians,
                "speedup": statistics.median(speedups), "block_speedups": speedups,
                "throughput_per_s": b / (statistics.median(medians) / 1000.0)}

    # ---------------------------------------------------------------- mixed precision
    mixed = mixed_policy(table.names)
    qmixed = bitsmith.quantize(model, mixed, calibration=stats)
    cost = estimate(table, mixed)
    packed = save_packed(qmixed, tmp / "mixed.safetensors", example_inputs=example,
                         model_name="resnet20")
    reloaded = load_packed(tmp / "mixed.safetensors")
    x, _ = proto.test.tensors(range(1000))
    with torch.no_grad():
        identical = bool(torch.equal(qmixed(x), reloaded(x)))
    mixed_onnx = export_onnx(qmixed, tmp / "mixed.onnx", example, calibration=calib)
    onnx.checker.check_model(str(tmp / "mixed.onnx"))
    sd_bytes = state_dict_bytes(model)
    mixed_result = {
        "avg_weight_bits": cost.avg_weight_bits, "simulation_accuracy": evaluate(qmixed,
                                                                                 test).accuracy,
        "packed_file_bytes": packed.file_bytes, "packed_tensor_bytes": packed.tensor_bytes,
        "packed_header_bytes": packed.header_bytes, "cost_model_bytes": cost.size_bytes,
        "matches_cost_model": packed.matches_cost_model, "differences": packed.differences,
        "fp32_state_dict_bytes": sd_bytes, "cost_model_fp32_bytes": cost.fp32_bytes,
        "smaller_than_fp32_state_dict": sd_bytes / packed.file_bytes,
        "reload_bit_identical_on_1000_test_images": identical,
        "onnx_bytes": mixed_onnx.file_bytes,
        "onnx_agreement": compare_onnx(qmixed, tmp / "mixed.onnx", test, THREADS).to_dict(),
    }

    main_row = variants["bitsmith W8A8 (int8 residuals)"]
    lines = [
        f"ONNX Runtime {__import__('onnxruntime').__version__}, CPU, {THREADS} intra-op threads, "
        f"sequential; latency = median of {RUNS_B1} (batch 1) / {RUNS_B64} (batch 64) "
        f"interleaved rounds per block, {BLOCKS} blocks; speedup = median over blocks of the "
        "within-block ratio FP32 / model (block values in the JSON). FP32 accuracy "
        f"{fp32_acc:.2f}% on the 1,000 lossless test images.",
        "",
        "| export | b1 ms | b1 speedup | b64 ms | b64 speedup | agreement % | max logit err |"
        " ONNX acc % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        v = variants[label]
        ag = v.get("agreement")
        lines.append(
            f"| {label} | {v['batch1']['median_ms']:.3f} | {v['batch1']['speedup']:.2f}x | "
            f"{v['batch64']['median_ms']:.2f} | {v['batch64']['speedup']:.2f}x | "
            + (f"{ag['top1_agreement']:.1f} | {ag['max_abs_error']:.3f} | "
               f"{ag['onnx_accuracy']:.1f} |" if ag else "- | - | - |"))
    lines += [
        "",
        f"Acceptance (W8A8, int8 residuals): speedup {main_row['batch1']['speedup']:.2f}x at "
        f"batch 1 (blocks: {', '.join(f'{v:.2f}' for v in main_row['batch1']['block_speedups'])})"
        f" and {main_row['batch64']['speedup']:.2f}x at batch 64 (blocks: "
        f"{', '.join(f'{v:.2f}' for v in main_row['batch64']['block_speedups'])}) (>= 1.5x); top-1 "
        f"agreement {main_row['agreement']['top1_agreement']:.1f}% (>= 99.5%).",
        "",
        f"Mixed 2-8-bit policy, {mixed_result['avg_weight_bits']:.2f} average weight bits: "
        f"packed file {mixed_result['packed_file_bytes']:,} bytes (payload "
        f"{mixed_result['packed_tensor_bytes']:,} = cost model "
        f"{mixed_result['cost_model_bytes']:,}: {mixed_result['matches_cost_model']}; header "
        f"{mixed_result['packed_header_bytes']:,}), FP32 state dict {sd_bytes:,} bytes: "
        f"{mixed_result['smaller_than_fp32_state_dict']:.2f}x smaller. Reload bit-identical on "
        f"1,000 test images: {identical}. Simulation accuracy "
        f"{mixed_result['simulation_accuracy']:.2f}%; its ONNX export agrees on "
        f"{mixed_result['onnx_agreement']['top1_agreement']:.1f}%.",
    ]
    write_result("export_resnet20", {"fp32_accuracy": fp32_acc, "variants": variants,
                                     "mixed": mixed_result}, lines)


if __name__ == "__main__":
    main()
