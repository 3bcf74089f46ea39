"""A Linear-heavy model in ONNX Runtime at FP32, W8A8 and 4-bit block-wise weight-only.

GPT-2 small (124M parameters, built from its published config, random init, offline; LM
head tied to the token embedding, W8A8 / int4 on every Linear including the head) exported
four ways:

* ``fp32``: the float model;
* ``w8a8``: per-channel int8 weights, uint8 activations (``MatMulIntegerToFloat``);
* ``w4 block32 (acc 0)``: 4-bit symmetric weights in blocks of 32, float activations
  (``MatMulNBits``, ``accuracy_level=0``: float arithmetic, exactly the simulation);
* ``w4 block32 (acc 4)``: the same file with ``accuracy_level=4`` (ONNX Runtime quantizes
  each layer input to int8 per block on the fly: VNNI kernels).

Latency: interleaved rounds (every model once per round, random order per round), median
per model, at batch 1 and batch 4, 128 tokens each; file sizes; argmax agreement of
each export with its own simulation and with FP32 on Zipf-distributed token ids. Run under
the shared lock: ``flock /tmp/bitsmith-bench.lock python -m benchmarks.int4_linear``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.export import compare_onnx, export_fp32_onnx, export_onnx
from bitsmith.export.ort import interleaved_latency, make_session

from .architectures import _zipf_tokens
from .common import write_result

SHAPES = [(1, 128), (4, 128)]  # (batch, tokens); the export fixes the sequence length


def _agreement(qmodel, path, data) -> dict:
    return compare_onnx(qmodel, path, data).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=40, help="timed rounds at batch 1")
    parser.add_argument("--runs-large", type=int, default=12, help="timed rounds at batch 4")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 layers (12 = small)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from bitsmith.models import build_model

    model = build_model("hf_gpt2", n_layer=args.layers)
    vocab = model.model.config.vocab_size
    calib = [_zipf_tokens(4, 128, vocab, 1)]
    evaluation = [_zipf_tokens(2, 128, vocab, 2 + i) for i in range(4)]
    _, table, _ = bitsmith.prepare(model, calib[0][:1])
    w8 = Policy.uniform(table.names, QSpec("uniform_symmetric", 8, "channel"),
                        QSpec("uniform_asymmetric", 8))
    w4 = Policy({n: LayerSpec(QSpec("uniform_symmetric", 4, "block32"), None)
                 for n in table.names})
    with tempfile.TemporaryDirectory(prefix="bitsmith-int4-") as tmp:
        folder = Path(tmp)
        paths, agreement, kernels, sims = {}, {}, {}, {}
        paths["fp32"] = export_fp32_onnx(model, folder / "fp32.onnx", calib[0][:1])
        for label, policy in (("w8a8", w8), ("w4 block32", w4)):
            qmodel = bitsmith.quantize(model, policy, calibration=calib)
            sims[label] = qmodel
            levels = (0, 4) if label.startswith("w4") else (None,)
            for level in levels:
                key = label if level is None else f"{label} (acc {level})"
                path = folder / f"{key.replace(' ', '_')}.onnx"
                report = export_onnx(qmodel, path, calib[0][:1], calibration=calib,
                                     nbits_accuracy_level=level or 0)
                paths[key] = path
                kernels[key] = {"layers": {"integer": report.integer_layers,
                                           "weight_only": report.weight_only_layers,
                                           "float": report.float_layers},
                                "graph": report.kernels}
                agreement[key] = {"vs_simulation": _agreement(qmodel, path, evaluation)}
        # vs FP32: the float model's argmax as the reference
        with torch.no_grad():
            ref = [model(x).argmax(-1) for x in evaluation]
        for key, path in paths.items():
            session = make_session(path, args.threads)
            hits = total = 0
            for x, r in zip(evaluation, ref):
                out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
                hits += int((torch.from_numpy(out).argmax(-1) == r).sum())
                total += r.numel()
            agreement.setdefault(key, {})["vs_fp32"] = 100.0 * hits / total
        sizes = {k: Path(p).stat().st_size for k, p in paths.items()}
        keys = list(paths)
        sessions = [make_session(paths[k], args.threads) for k in keys]
        latency = {}
        for batch, tokens in SHAPES:
            x = _zipf_tokens(batch, tokens, vocab, 9).numpy()
            runs = args.runs if batch == 1 else args.runs_large
            timings = interleaved_latency(sessions, [x], runs=runs, warmup=3)
            base = timings[0].median_ms
            latency[f"{batch}x{tokens}"] = {k: {**t.to_dict(), "speedup": base / t.median_ms}
                                            for k, t in zip(keys, timings)}
    payload = {"model": f"GPT-2 ({args.layers} layers, from config)",
               "linear_layers": len(table), "sizes_bytes": sizes, "latency": latency,
               "agreement": agreement, "kernels": kernels,
               "loadavg": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    lines = ["GPT-2 small from config (random init), every Linear quantized (attention, MLP, "
             "tied LM head); ONNX Runtime CPU, "
             f"{args.threads} threads; interleaved medians. Load average at the end: "
             f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.", "",
             "| export | file MB | " + " | ".join(f"{s} ms (speedup)" for s in latency)
             + " | argmax vs its simulation | argmax vs FP32 | layers int / weight-only / float |",
             "|---|---:|" + "---:|" * len(latency) + "---:|---:|---:|"]
    for k in keys:
        lat = " | ".join(f"{latency[s][k]['median_ms']:.1f} ({latency[s][k]['speedup']:.2f}x)"
                         for s in latency)
        sim = agreement[k].get("vs_simulation", {}).get("top1_agreement")
        kern = kernels.get(k, {}).get("layers")
        sim_text = "—" if sim is None else f"{sim:.2f}%"
        kern_text = "—" if kern is None else "{integer} / {weight_only} / {float}".format(**kern)
        lines.append(f"| {k} | {sizes[k] / 1e6:.1f} | {lat} | {sim_text} | "
                     f"{agreement[k]['vs_fp32']:.2f}% | {kern_text} |")
    write_result("int4_linear", payload, lines)
    np.random.seed(0)


if __name__ == "__main__":
    main()
