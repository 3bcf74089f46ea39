"""End to end: supernet -> search -> derivation -> QAT -> evaluation -> run directory.

:func:`run_search` is what ``bitsmith search`` and the benchmarks call. Outputs (rank 0,
in ``out_dir``): the ``bitsmith.run/1`` files of :class:`bitsmith.report.RunWriter`
(``run.json``, ``layers.json``, ``trials.jsonl``, ``policy.yaml``, ``search.jsonl`` with the
search and QAT curves), plus ``weights.safetensors`` / ``result.json``
(:func:`bitsmith.search.qat.save_result`), ``search_layers.json`` (per-layer choice,
probability, step fixed) and ``search_curves.png``. Checkpoints go to
``out_dir/ckpt/search`` and ``out_dir/ckpt/qat-<policy fingerprint>``; a rerun with
``resume=True`` continues.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from bitsmith.cost.budget import Budget
from bitsmith.engine import evaluate
from bitsmith.policy import Policy
from bitsmith.search.baseline import uniform_within_budget
from bitsmith.search.derive import Derivation, derive_policy
from bitsmith.search.methods import SearchMethod, make_method
from bitsmith.search.qat import build_qat_model, save_result
from bitsmith.search.supernet import Supernet, SupernetSpace, build_supernet, spec_label
from bitsmith.training import (
    TrainConfig,
    TrainResult,
    dist_info,
    init_distributed,
    resolve_device,
    train,
)


@dataclass
class SearchSettings:
    """Everything :func:`run_search` needs besides the model and data.

    Attributes:
        method: ``"qss"``, ``"qpl"`` or ``"ssps"``.
        budget: the limits (``Budget(size_bytes=..., bitops=..., avg_weight_bits=...,
            latency=...)``).
        space: the candidates.
        search: training config of the search phase (weights + quantizer steps). With
            BN folded (the default) the network has no normalisation left, so keep the
            learning rate small: SGD ``lr=2e-4`` recovered ResNet-20 W3A4 in 40 steps while
            ``5e-4`` diverged (docs/search.md).
        qat: training config of the fine-tuning phase (``distill_weight`` > 0 for KD).
        act_budget_bytes: optional peak activation bytes per example.
        method_kw: extra arguments of the method (``penalty``, ``arch_lr``, ``tau0``,
            ``tau_min``, ``warmup_steps``, ``threshold``, ``share``, ``mode`` ...).
        arch_batch_size: held-out batch size of the architecture updates.
        fold_bn: fold BatchNorm before the search.
        warm_start: start the architecture parameters at a Policy (``init_policy`` of the
            method): a :class:`~bitsmith.policy.Policy`, or ``"fisher"`` / ``"hessian"`` /
            ``"measured_kl"`` to
            compute it with the sensitivity estimator and the integer program under
            ``budget`` (:func:`bitsmith.search.warmstart.ilp_warm_start`, on ``arch_data``
            when given, else the training batches); ``None`` = neutral start.
        warm_start_strength: logit advantage of the warm-start choice (QSS/SSPS;
            ``init_strength``): initial probability ``e^s / (e^s + K_w - 1)``.
        warm_start_examples: examples of the sensitivity estimate.
        uniform_baseline: also fine-tune the dearest *uniform* policy of the candidates that
            meets the budget (:func:`bitsmith.search.baseline.uniform_within_budget`), with the
            same QAT recipe from the same post-search weights, and report it next to the
            searched one (a warning when it scores higher). Doubles the QAT time.
    """

    method: str = "qss"
    budget: Budget = field(default_factory=lambda: Budget(avg_weight_bits=4.0))
    space: SupernetSpace = field(default_factory=SupernetSpace)
    search: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, lr=2e-4, weight_decay=0.0, grad_clip=10.0))
    qat: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, lr=2e-4, weight_decay=0.0, grad_clip=10.0, distill_weight=0.7))
    act_budget_bytes: float | None = None
    method_kw: dict[str, Any] = field(default_factory=dict)
    arch_batch_size: int = 64
    fold_bn: bool = True
    warm_start: Policy | str | None = None
    warm_start_strength: float = 3.0
    warm_start_examples: int = 512
    uniform_baseline: bool = False


@dataclass
class SearchOutcome:
    """What :func:`run_search` returns (sizes in bytes, BitOPs per example, seconds)."""

    policy: Policy
    derivation: Derivation
    qmodel: nn.Module
    net: Supernet
    method: SearchMethod
    search_result: TrainResult
    qat_result: TrainResult | None
    accuracy: float | None
    fp32_accuracy: float | None
    search_seconds: float
    qat_seconds: float
    files: dict[str, str] = field(default_factory=dict)
    warm_start: Policy | None = None
    warm_start_seconds: float = 0.0
    baseline: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        c = self.derivation.cost
        return {"method": self.method.name, "accuracy": self.accuracy,
                "fp32_accuracy": self.fp32_accuracy, "size_bytes": c.size_bytes,
                "bitops": c.bitops, "avg_weight_bits": c.avg_weight_bits,
                "compression": c.compression, "repaired": self.derivation.repaired,
                "search_seconds": self.search_seconds, "qat_seconds": self.qat_seconds,
                "search_peak_memory_bytes": self.search_result.peak_memory_bytes,
                "policy_fingerprint": self.policy.fingerprint(),
                "warm_start": None if self.warm_start is None else {
                    n: spec_label(s) for n, s in self.warm_start.items()},
                "warm_start_seconds": self.warm_start_seconds,
                "uniform_baseline": None if self.baseline is None else {
                    k: v for k, v in self.baseline.items() if k not in ("policy", "qmodel")}}


def _with_ckpt(cfg: TrainConfig, out_dir: Path | None, sub: str, **changes: Any) -> TrainConfig:
    ckpt = str(out_dir / "ckpt" / sub) if out_dir is not None and cfg.checkpoint_dir is None \
        else cfg.checkpoint_dir
    return dataclasses.replace(cfg, checkpoint_dir=ckpt, **changes)


def run_search(model: nn.Module, train_loader: Iterable, settings: SearchSettings, *,
               arch_data: Dataset | None = None, calibration: Iterable | None = None,
               eval_loader: Iterable | None = None, teacher: nn.Module | None = None,
               out_dir: str | Path | None = None, latency: Any = None,
               example_inputs: torch.Tensor | None = None, model_name: str = "",
               dataset: str = "", eval_set: str = "", run_qat: bool = True) -> SearchOutcome:
    """Search a mixed-precision Policy under ``settings.budget``, fine-tune and evaluate.

    Args:
        model: the float (pretrained) model; not modified.
        train_loader: ``(inputs, labels)`` batches for weight updates (search and QAT).
        settings: the :class:`SearchSettings`.
        arch_data: held-out dataset for the architecture updates (``None`` = joint).
        calibration: batches for the initial activation ranges (default ``train_loader``).
        eval_loader: the report set; evaluated once at the end (and the FP32 model on it).
        teacher: model for distillation (default: ``model`` itself when
            ``settings.qat.distill_weight > 0``).
        out_dir: run directory (``None``: write nothing).
        latency: latency LUT for a latency budget.
        example_inputs: one input batch (default: the first training batch).
        model_name, dataset, eval_set: labels for the run directory.
        run_qat: fine-tune after the derivation (``False``: evaluate the derived policy on
            the search weights).

    Raises:
        InfeasibleBudgetError: the budget is below the smallest representable model.
        SupernetSpaceError: empty or invalid candidates.
        ConversionError: the model has no quantizable layer.
        NonFiniteLossError: NaN/inf loss (the last good checkpoint is kept).
    """
    out = Path(out_dir) if out_dir is not None else None
    device = resolve_device(settings.search.device, dist_info()[2])
    we_init = init_distributed(device)
    try:
        if example_inputs is None:
            first = next(iter(train_loader))
            example_inputs = first[0] if isinstance(first, (tuple, list)) else first
        net = build_supernet(model, example_inputs, settings.space,
                             calibration if calibration is not None else train_loader,
                             fold_bn=settings.fold_bn, latency=latency)
        tw = time.perf_counter()
        warm = resolve_warm_start(settings, model, net, train_loader, arch_data, latency,
                                  calibration=calibration)
        warm_s = time.perf_counter() - tw
        method_kw = dict(settings.method_kw)
        if warm is not None:
            method_kw.update(init_policy=warm, init_strength=settings.warm_start_strength)
        method = make_method(settings.method, net, settings.budget,
                             act_budget_bytes=settings.act_budget_bytes, arch_data=arch_data,
                             arch_batch_size=settings.arch_batch_size, **method_kw)
        t0 = time.perf_counter()
        scfg = _with_ckpt(settings.search, out, "search", find_unused_parameters=True)
        sres = train(net.model, train_loader, scfg, callbacks=[method])
        search_s = time.perf_counter() - t0
        derivation = derive_policy(method, latency=latency)
        qmodel = build_qat_model(net, derivation.policy,
                                 calibration if calibration is not None else train_loader)
        qres = None
        t1 = time.perf_counter()
        if run_qat:
            # Keyed by the policy: a resumed run whose derivation changed starts QAT afresh.
            qcfg = _with_ckpt(settings.qat, out, f"qat-{derivation.policy.fingerprint()[:12]}")
            kd_teacher = teacher
            if kd_teacher is None and qcfg.distill_weight > 0:
                kd_teacher = model
            qres = train(qmodel, train_loader, qcfg, teacher=kd_teacher)
        qat_s = time.perf_counter() - t1
        acc = fp32 = None
        if eval_loader is not None:
            qmodel.eval()
            acc = evaluate(qmodel, eval_loader, device=device).accuracy
            fp32 = evaluate(model.to(device), eval_loader, device=device).accuracy
        baseline = None
        if settings.uniform_baseline and run_qat:
            baseline = _uniform_baseline(settings, net, train_loader, calibration, eval_loader,
                                         out, kd_teacher, latency, device, acc)
        outcome = SearchOutcome(derivation.policy, derivation, qmodel, net, method, sres, qres,
                                acc, fp32, search_s, qat_s, warm_start=warm,
                                warm_start_seconds=warm_s, baseline=baseline)
        if out is not None and dist_info()[0] == 0:
            outcome.files = _write_run(outcome, out, settings, model_name, dataset, eval_set)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return outcome
    finally:
        if we_init and dist.is_initialized():
            dist.destroy_process_group()


def _uniform_baseline(settings: SearchSettings, net: Supernet, train_loader: Iterable,
                      calibration: Iterable | None, eval_loader: Iterable | None,
                      out: Path | None, teacher: nn.Module | None, latency: Any,
                      device: torch.device, searched_accuracy: float | None
                      ) -> dict[str, Any]:
    """Fine-tune the dearest uniform policy within the budget with the searched one's recipe.

    Returns ``{"policy", "label", "qmodel", "accuracy", "size_bytes", "bitops",
    "avg_weight_bits", "qat_seconds"}``, or ``{"label": None, "reason": ...}`` when no
    uniform choice of the candidates meets the budget.
    """
    import warnings

    from bitsmith.cost import estimate

    policy = uniform_within_budget(net, settings.budget, latency, settings.act_budget_bytes)
    if policy is None:
        return {"label": None, "reason": "no uniform choice of the candidates meets the budget"}
    t0 = time.perf_counter()
    bq = build_qat_model(net, policy, calibration if calibration is not None else train_loader)
    cfg = _with_ckpt(settings.qat, out, f"qat-baseline-{policy.fingerprint()[:12]}")
    train(bq, train_loader, cfg, teacher=teacher)
    seconds = time.perf_counter() - t0
    acc = None
    if eval_loader is not None:
        bq.eval()
        acc = evaluate(bq, eval_loader, device=device).accuracy
    cost = estimate(net.table, policy)
    label = spec_label(policy[net.names[0]])
    if acc is not None and searched_accuracy is not None and acc > searched_accuracy:
        warnings.warn(f"the uniform policy {label} within the same budget scored {acc:.2f} % "
                      f"vs {searched_accuracy:.2f} % for the searched mixed policy; consider "
                      "deploying the uniform one (or a size budget, see docs/search.md)",
                      RuntimeWarning, stacklevel=3)
    return {"policy": policy, "label": label, "qmodel": bq, "accuracy": acc,
            "size_bytes": cost.size_bytes, "bitops": cost.bitops,
            "avg_weight_bits": cost.avg_weight_bits, "qat_seconds": seconds}


def resolve_warm_start(settings: SearchSettings, model: nn.Module, net: Supernet,
                       train_loader: Iterable, arch_data: Dataset | None,
                       latency: Any = None, calibration: Iterable | None = None
                       ) -> Policy | None:
    """The Policy that ``settings.warm_start`` asks for (``None``: no warm start).

    Raises:
        ValueError: an unknown warm-start name, or ``method_kw`` already has ``init_policy``.
    """
    ws = settings.warm_start
    if ws is None:
        return None
    if "init_policy" in settings.method_kw:
        raise ValueError("give the warm start either as SearchSettings.warm_start or as "
                         "method_kw['init_policy'], not both")
    if isinstance(ws, Policy):
        return ws
    if not isinstance(ws, str):
        raise ValueError(f"warm_start must be a Policy, a metric name or None, got "
                         f"{type(ws).__name__}")
    from bitsmith.search.warmstart import WARM_METRICS, ilp_warm_start

    if ws not in WARM_METRICS:
        raise ValueError(f"unknown warm start {ws!r}; use a Policy or one of {WARM_METRICS}")
    data: Iterable = train_loader
    if arch_data is not None:
        from torch.utils.data import DataLoader

        data = DataLoader(arch_data, batch_size=64, shuffle=False)
    alloc = ilp_warm_start(model, net, settings.budget, data, metric=ws,
                           calibration=calibration, act_budget_bytes=settings.act_budget_bytes,
                           latency=latency, max_examples=settings.warm_start_examples,
                           seed=settings.search.seed)
    return alloc.policy


def _write_run(o: SearchOutcome, out: Path, settings: SearchSettings, model_name: str,
               dataset: str, eval_set: str) -> dict[str, str]:
    from bitsmith.rundir import RunWriter

    run = RunWriter(out, model=model_name or type(o.net.model).__name__, dataset=dataset,
                    eval_set=eval_set, producer=f"bitsmith search ({o.method.name})",
                    notes={"budget": dict(settings.budget.items()),
                           "act_budget_bytes": settings.act_budget_bytes,
                           "space": dataclasses.asdict(settings.space),
                           "search": settings.search.to_dict(), "qat": settings.qat.to_dict(),
                           "method_kw": settings.method_kw,
                           "warm_start": (settings.warm_start if isinstance(
                               settings.warm_start, str) or settings.warm_start is None
                               else "policy"),
                           "warm_start_strength": settings.warm_start_strength})
    run.write_layers(o.net.table)
    if o.fp32_accuracy is not None:
        run.set_fp32(o.fp32_accuracy)
    # One time axis: QAT steps continue after the search steps.
    offset = {"search": 0, "qat": o.search_result.steps}
    for label, res in (("search", o.search_result), ("qat", o.qat_result)):
        if res is None:
            continue
        for entry in res.history:
            run.log_search(int(entry["step"]) + offset[label], label=label,
                           **{k: v for k, v in entry.items()
                              if k not in ("step", "epoch") and isinstance(v, (int, float))})
    name = f"{o.method.name}-searched"
    run.add_trial(name, accuracy=o.accuracy if o.accuracy is not None else float("nan"),
                  policy=o.policy, source=f"search:{o.method.name}",
                  repaired=o.derivation.repaired, search_seconds=o.search_seconds,
                  qat_seconds=o.qat_seconds)
    b = o.baseline
    if b is not None and b.get("policy") is not None:
        run.add_trial("uniform-baseline", accuracy=b["accuracy"] if b["accuracy"] is not None
                      else float("nan"), policy=b["policy"], source="baseline:uniform",
                      qat_seconds=b["qat_seconds"])
    run.choose(name)
    files = {k: str(v) for k, v in save_result(o.qmodel, out, o.summary()).items()}
    files["layers"] = str(run.write_search_layers(o.method.name, o.derivation.rows))
    try:
        from bitsmith.report.figures import search_figure

        pts = [json.loads(line) for line in (out / "search.jsonl").read_text().splitlines()]
        png = search_figure(pts)
        if png:
            (out / "search_curves.png").write_bytes(png)
            files["curves"] = str(out / "search_curves.png")
    except (ImportError, FileNotFoundError):
        pass
    return files
