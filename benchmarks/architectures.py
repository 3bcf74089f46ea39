"""Every architecture in, every architecture out: W8A8 on 16 torchvision models, BERT-base and
GPT-2 (from config), with ONNX Runtime export and the kernels its optimised graph runs.

Per model: LayerTable size, Linear layers and attention projections quantized, float ops
that warn, cosine of W8A8 logits against float, top-1 agreement of the simulation with
float, ONNX Runtime (QDQ export) vs the simulation (argmax agreement, logit error), and the
integer / float kernels of ONNX Runtime's optimised graph (per layer and in total).

Realistic input statistics without downloads: torchvision models (random init,
``num_classes=10``) see CIFAR-10 images from ``../shared/data`` resized to the model's input
size (128 px; ViT-B/16 and MaxViT-T 224 px, their fixed sizes); their BatchNorm statistics
are re-estimated on 96 of them (train-mode passes, cumulative average) and the Linear
classifier head is fitted on 256 others by ridge regression on their labels (a short fit;
``--head pca`` sets it to the top-10 principal directions of its input features instead).
Random features carry little class information, so the logits have small margins: any
perturbation flips some argmaxes, which is why the table also shows the W8A8 simulation
against FP32 and the export with the simulation's own Q/DQ points only, as yardsticks.
Calibration: 64 other training images; evaluation: the first 200 CIFAR-10 test images.
BERT-base (sequence classification, 2 labels) and GPT-2 small (LM
head, tied embedding) are built from their published configs, randomly initialised, and
fed Zipf-distributed token ids (the frequency profile of text), 128 tokens per sequence.

Run: ``python -m benchmarks.architectures [--models a,b] [--eval 200]``; results are written
after every model (the run resumes: finished models are kept unless ``--redo``; runs with
different ``--models`` can share the result file).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.atomic import atomic_write_text
from bitsmith.export import compare_onnx, export_onnx

from .common import RESULTS, environment

NAME = "architectures"
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)
# (name, input size): the 12 of the foundation acceptance, then the 6 more of issue 16
TORCHVISION = [
    ("resnet18", 128), ("resnet50", 128), ("mobilenet_v2", 128), ("mobilenet_v3_small", 128),
    ("efficientnet_b0", 128), ("shufflenet_v2_x1_0", 128), ("squeezenet1_0", 128),
    ("densenet121", 128), ("vgg11_bn", 128), ("regnet_x_400mf", 128), ("convnext_tiny", 128),
    ("vit_b_16", 224), ("swin_t", 128), ("maxvit_t", 224), ("efficientnet_v2_s", 128),
    ("regnet_y_400mf", 128),
]
TRANSFORMERS = [("hf_bert", 128), ("hf_gpt2", 128)]
RIDGE = 0.1  # ridge penalty, relative to the trace of the features' Gram matrix
ATTENTION = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".qkv", ".proj", ".to_qkv",
             ".merge", ".query", ".key", ".value", ".attention.output.dense", ".c_attn",
             ".attn.c_proj")


def _cifar(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels) resized to ``size``."""
    from bitsmith.data.cifar import cifar10_test_subset, cifar10_train_subset

    def stack(ds, n):
        xs, ys = zip(*(ds[i] for i in range(n)))
        return torch.stack(xs), torch.stack(ys)

    xtr, ytr = stack(cifar10_train_subset(), 416)
    xte, yte = stack(cifar10_test_subset(), 200)
    resize = lambda x: F.interpolate(x, size=(size, size), mode="bilinear",  # noqa: E731
                                     align_corners=False)
    return resize(xtr), ytr, resize(xte), yte


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


@torch.no_grad()
def _reestimate_bn(model: nn.Module, images: torch.Tensor) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
    model.train()
    for batch in _batches(images, 32):
        model(batch)
    model.eval()


@torch.no_grad()
def _head_features(model: nn.Module, head: nn.Linear, images: torch.Tensor) -> torch.Tensor:
    feats = []
    handle = head.register_forward_pre_hook(lambda _m, a: feats.append(a[0].flatten(1)))
    try:
        for batch in _batches(images, 32):
            model(batch)
    finally:
        handle.remove()
    return torch.cat(feats).double()


@torch.no_grad()
def _principal_head(model: nn.Module, head: nn.Linear, images: torch.Tensor) -> None:
    """Set ``head`` to the top principal directions of its input features (centred, unit
    variance per output): logits that vary as much as the features do.

    A random network's features carry no class information; a head fitted to labels on them
    (ridge) gives near-tie logits whose argmax flips under any perturbation (resnet18: the
    float model and its W8A8 simulation agree on 85% of images, two exports of the same
    quantized model on 86-92%). The principal directions are the features' dominant,
    stable variation, as a trained network's logits are."""
    x = _head_features(model, head, images)
    mean = x.mean(0)
    _, s, v = torch.linalg.svd(x - mean, full_matrices=False)
    k = head.out_features
    std = s[:k] / (len(x) - 1) ** 0.5
    w = v[:k] / std[:, None]
    head.weight.copy_(w.float())
    if head.bias is not None:
        head.bias.copy_((-(w @ mean)).float())


@torch.no_grad()
def _fit_head(model: nn.Module, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor
              ) -> None:
    """Ridge regression of ``head`` on its input features against one-hot labels."""
    x = _head_features(model, head, images)
    mean = x.mean(0)
    x = x - mean
    y = F.one_hot(labels, head.out_features).double()
    y = y - y.mean(0)  # centred targets: no constant offset that would inflate the cosine
    gram = x.T @ x
    # strong shrinkage: more feature dimensions than images, and a near-interpolating head
    # would turn feature noise into large logit noise
    ridge = RIDGE * gram.diagonal().sum() * torch.eye(len(gram), dtype=x.dtype)
    w = torch.linalg.solve(gram + ridge, x.T @ y).T  # (classes, features)
    w = w / w.norm(dim=1).mean()  # unit scale (any scale gives the same argmaxes)
    head.weight.copy_(w.float())
    if head.bias is not None:
        head.bias.copy_((-(w @ mean)).float())


def _zipf_tokens(n: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=(n, seq))
    perm = rng.permutation(vocab)  # which ids are frequent: arbitrary but fixed
    return torch.from_numpy(perm[np.minimum(ranks, vocab) - 1]).long()


def _setup_torchvision(name: str, size: int, n_eval: int, head: str) -> dict[str, Any]:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    xtr, ytr, xte, _ = _cifar(size)
    _reestimate_bn(model, xtr[:96])
    _, table, _ = bitsmith.prepare(model, xtr[:1])
    last = model.get_submodule(table.names[-1])
    fitted = "none"
    if isinstance(last, nn.Linear):
        if head == "pca":
            _principal_head(model, last, xtr[96:352])
        else:
            _fit_head(model, last, xtr[96:352], ytr[96:352])
        fitted = head
    return {"model": model, "calib": _batches(xtr[352:416], 16),
            "eval": _batches(xte[:n_eval], 20), "example": xtr[:1],
            "input": f"3x{size}x{size} CIFAR-10 images", "head_fit": fitted}


def _setup_transformer(name: str, seq: int, n_eval: int) -> dict[str, Any]:
    from bitsmith.models import build_model

    model = build_model(name)
    vocab = model.model.config.vocab_size
    n = max(8, n_eval // (16 if name == "hf_gpt2" else 2))
    return {"model": model, "calib": _batches(_zipf_tokens(16, seq, vocab, 1), 4),
            "eval": _batches(_zipf_tokens(n, seq, vocab, 2), 4),
            "example": _zipf_tokens(1, seq, vocab, 3),
            "input": f"{seq} Zipf token ids", "head_fit": "none"}


def _cosines(model: nn.Module, qmodel: nn.Module, batches: list[torch.Tensor]
             ) -> tuple[list[float], float]:
    cos, agree, count = [], 0, 0
    with torch.no_grad():
        for x in batches:
            ref, out = model(x).float(), qmodel(x).float()
            cos += F.cosine_similarity(ref.flatten(1), out.flatten(1), dim=1).tolist()
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            count += ref.argmax(-1).numel()
    return cos, 100.0 * agree / count


def run_model(name: str, size: int, n_eval: int, workdir: Path, head: str = "ridge"
              ) -> dict[str, Any]:
    t0 = time.perf_counter()
    setup = (_setup_transformer(name, size, n_eval) if name.startswith("hf_")
             else _setup_torchvision(name, size, n_eval, head))
    model = setup["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, table, report = bitsmith.prepare(model, setup["example"])
        policy = Policy.uniform(table.names, W8, A8)
        qmodel = bitsmith.quantize(model, policy, calibration=setup["calib"])
        onnx_path = workdir / f"{name}.onnx"
        export = export_onnx(qmodel, onnx_path, setup["example"], calibration=setup["calib"])
    cos, sim_vs_float = _cosines(model, qmodel, setup["eval"])
    agreement = compare_onnx(qmodel, onnx_path, setup["eval"])
    # the same model exported with the simulation's own Q/DQ points only (no integer chains)
    exact = export_onnx(qmodel, onnx_path, setup["example"], integer_outputs=False)
    exact_agreement = compare_onnx(qmodel, onnx_path, setup["eval"])
    linears = [n for n in table.names if table[n].type == "Linear"]
    attention = [n for n in linears if n.endswith(ATTENTION)]
    row = {
        "model": name, "input": setup["input"], "head_fit": setup["head_fit"],
        "traced": report.traced, "params": table.total_params, "layers": len(table),
        "linear_layers": len(linears), "attention_projections": len(attention),
        "quantized": len(qmodel.bitsmith.report.quantized),
        "rewritten": len(report.rewritten),
        "float_ops_warned": [f"{op.name} ({op.kind})" for op in table.warned_float_ops],
        "float_ops_quiet": len(table.float_ops) - len(table.warned_float_ops),
        "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
        "sim_vs_float_top1": sim_vs_float,
        "ort_vs_sim": agreement.to_dict(),
        "ort_vs_sim_simulation_points_only": {
            **exact_agreement.to_dict(), "integer_layers": exact.integer_layers,
            "float_layers": exact.float_layers},
        "ort_layers": {"integer": export.integer_layers, "weight_only": export.weight_only_layers,
                       "float": export.float_layers, "float_names": export.float_layer_names},
        "ort_kernels": export.kernels, "onnx_bytes": export.file_bytes,
        "seconds": time.perf_counter() - t0,
    }
    onnx_path.unlink(missing_ok=True)
    return row


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "W8A8 (per-channel int8 weights, uint8 activations, min/max calibration), random "
        "weights with realistic input statistics (see the script's docstring). Kernel counts "
        "are read from ONNX Runtime's optimised graph: per layer (integer / float) and every "
        "compute kernel of the graph (attention's activation-by-activation MatMuls are float).",
        "",
        "| model | input | layers | Linear | attn proj | quantized | warned float ops | "
        "cosine mean (min) | sim vs FP32 top-1 | ORT vs sim argmax | max abs err | "
        "ORT layers int/float | ORT kernels int/float | sim-points-only export: argmax, "
        "int/float layers |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, k, lay = r["ort_vs_sim"], r["ort_kernels"], r["ort_layers"]
        e = r["ort_vs_sim_simulation_points_only"]
        warned = ", ".join(r["float_ops_warned"]) or "none"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['layers']} | {r['linear_layers']} | "
            f"{r['attention_projections']} | {r['quantized']} | {warned} | "
            f"{r['cosine_mean']:.4f} ({r['cosine_min']:.4f}) | {r['sim_vs_float_top1']:.1f}% | "
            f"{a['top1_agreement']:.2f}% of {a['count']} | {a['max_abs_error']:.3g} | "
            f"{lay['integer']}/{lay['float']} | {k.get('integer', 0)}/{k.get('float', 0)} | "
            f"{e['top1_agreement']:.2f}%, {e['integer_layers']}/{e['float_layers']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated subset")
    parser.add_argument("--eval", type=int, default=200, help="evaluation images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redo", action="store_true", help="recompute finished models")
    parser.add_argument("--head", choices=("pca", "ridge"), default="ridge",
                        help="classifier head of the random torchvision models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    todo = TORCHVISION + TRANSFORMERS
    if args.models:
        wanted = set(args.models.split(","))
        todo = [(n, s) for n, s in todo if n in wanted]
    path = RESULTS / f"{NAME}.json"
    done = {}
    if path.is_file() and not args.redo:
        done = {r["model"]: r for r in json.loads(path.read_text()).get("models", [])}
    workdir = RESULTS / ".architectures-tmp"  # ignored by git; files removed after each model
    workdir.mkdir(parents=True, exist_ok=True)
    for name, size in todo:
        if name in done:
            continue
        print(f"{name} ...", flush=True)
        row = run_model(name, size, args.eval, workdir, args.head)
        done[name] = row
        print(json.dumps({k: row[k] for k in ("cosine_mean", "ort_vs_sim", "ort_layers",
                                              "seconds")}), flush=True)
        if path.is_file():  # rows another run (other --models) wrote meanwhile
            for r in json.loads(path.read_text()).get("models", []):
                done.setdefault(r["model"], r)
        order = [n for n, _ in TORCHVISION + TRANSFORMERS if n in done]
        rows = [done[n] for n in order]
        payload = {"benchmark": NAME, "environment": {**environment(),
                   "loadavg": os.getloadavg()}, "models": rows}
        atomic_write_text(path, json.dumps(payload, indent=2))
        atomic_write_text(RESULTS / f"{NAME}.md",
                          "\n".join([f"# {NAME}", "", *_markdown(rows), ""]))
    workdir.rmdir() if not any(workdir.iterdir()) else None


if __name__ == "__main__":
    main()
