"""End to end: supernet -> search -> derivation -> QAT -> evaluation -> run directory.

:func:`search` (the producer contract) is what ``bitsmith search`` and the benchmarks
call. Outputs (rank 0, in ``out_dir``): the ``bitsmith.run/1`` files of
:class:`bitsmith.rundir.RunWriter` (``run.json``, ``layers.json``, ``trials.jsonl``,
``policy.yaml``, ``search.jsonl`` with the search and QAT curves), plus
``weights.safetensors`` / ``result.json`` (:func:`bitsmith.trained.save_result`) and
``search_layers.json`` (per-layer choice, probability, step fixed). Checkpoints go to
``out_dir/ckpt/search`` and ``out_dir/ckpt/qat-<policy fingerprint>``; a rerun with
``resume=True`` continues.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bitsmith.config import Config, ConfigError
from bitsmith.cost import Budget, estimate
from bitsmith.errors import InputError
from bitsmith.inputs import MetricError
from bitsmith.policy import Policy
from bitsmith.progress import stage
from bitsmith.result import QuantizationResult, cost_summary, plain, validation_summary
from bitsmith.scoring import EvaluateFn, Scorer, check_validation
from bitsmith.search.baseline import uniform_within_budget
from bitsmith.search.derive import Derivation, derive_policy
from bitsmith.search.methods import SearchMethod, make_method
from bitsmith.search.qat import build_qat_model
from bitsmith.search.supernet import Supernet, SupernetSpace, build_supernet, spec_label
from bitsmith.trained import save_result
from bitsmith.training import (
    TrainConfig,
    TrainResult,
    dist_info,
    init_distributed,
    resolve_device,
    train,
)


@dataclass(frozen=True)
class SearchConfig(Config):
    """Everything :func:`search` needs besides the model and data (YAML-loadable).

    Attributes:
        method: ``"qss"``, ``"qpl"`` or ``"ssps"``.
        budget: the limits (``Budget(size_bytes=..., bitops=..., avg_weight_bits=...,
            latency=...)``).
        space: the candidates (:class:`~bitsmith.search.supernet.SupernetSpace`).
        search: training config of the search phase (weights + quantizer steps). With
            BN folded (the default) the network has no normalisation left, so keep the
            learning rate small: SGD ``lr=2e-4`` recovered ResNet-20 W3A4 in 40 steps while
            ``5e-4`` diverged (docs/search.md).
        qat: training config of the fine-tuning phase (``distill_weight`` > 0 for KD).
        run_qat: fine-tune after the derivation (``False``: score the derived policy on the
            search weights).
        act_budget_bytes: optional peak activation bytes per example.
        method_kw: extra arguments of the method (``penalty``, ``arch_lr``, ``tau0``,
            ``tau_min``, ``warmup_steps``, ``threshold``, ``share``, ``mode`` ...).
        arch_batch_size: held-out batch size of the architecture updates.
        arch_updates: ``"validation"`` (DNAS alternation: architecture steps on batches of
            the validation data) or ``"joint"`` (from the training loss, with the weights).
        fold_bn: fold BatchNorm before the search.
        warm_start: start the architecture parameters at a Policy (``init_policy`` of the
            method): a :class:`~bitsmith.policy.Policy` or the path of a policy file, or
            ``"fisher"`` / ``"hessian"`` / ``"measured_kl"`` to compute it with the
            sensitivity estimator and the integer program under ``budget``
            (:func:`bitsmith.search.warmstart.ilp_warm_start`, on the validation data when
            given, else the training batches); ``None`` = neutral start.
        warm_start_strength: logit advantage of the warm-start choice (QSS/SSPS;
            ``init_strength``): initial probability ``e^s / (e^s + K_w - 1)``.
        warm_start_examples: examples of the sensitivity estimate.
        uniform_baseline: also fine-tune the dearest *uniform* policy of the candidates that
            meets the budget (:func:`bitsmith.search.baseline.uniform_within_budget`), with the
            same QAT recipe from the same post-search weights, and report it next to the
            searched one (a warning when it scores higher). Doubles the QAT time.
        latency_table: a latency LUT file (``bitsmith export`` latency tables) for a latency
            budget.
        labels: names shown in the run directory and report (``model``, ``dataset``).
    """

    method: Literal["qss", "qpl", "ssps"] = "qss"
    budget: Budget = field(default_factory=lambda: Budget(avg_weight_bits=4.0))
    space: SupernetSpace = field(default_factory=SupernetSpace)
    search: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, lr=2e-4, weight_decay=0.0, grad_clip=10.0))
    qat: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, lr=2e-4, weight_decay=0.0, grad_clip=10.0, distill_weight=0.7))
    run_qat: bool = True
    act_budget_bytes: float | None = None
    method_kw: dict[str, Any] = field(default_factory=dict)
    arch_batch_size: int = 64
    arch_updates: Literal["validation", "joint"] = "validation"
    fold_bn: bool = True
    warm_start: Policy | str | None = None
    warm_start_strength: float = 3.0
    warm_start_examples: int = 512
    uniform_baseline: bool = False
    latency_table: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.budget.items() and self.act_budget_bytes is None:
            raise ConfigError("SearchConfig: give a budget (size_bytes, bitops, "
                              "avg_weight_bits, latency) or act_budget_bytes")
        if self.budget.latency is not None and self.latency_table is None:
            raise ConfigError("SearchConfig: a latency budget needs latency_table (a LUT file "
                              "from `bitsmith export`)")


@dataclass
class SearchOutcome:
    """The search in full (``QuantizationResult.details``; sizes in bytes, BitOPs per
    example, seconds). ``accuracy`` / ``fp32_accuracy`` are validation scores."""

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
    metric_error: str | None = None

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
                "metric_error": self.metric_error,
                "uniform_baseline": None if self.baseline is None else {
                    k: v for k, v in self.baseline.items() if k not in ("policy", "qmodel")}}


def _with_ckpt(cfg: TrainConfig, out_dir: Path | None, sub: str, **changes: Any) -> TrainConfig:
    ckpt = str(out_dir / "ckpt" / sub) if out_dir is not None and cfg.checkpoint_dir is None \
        else cfg.checkpoint_dir
    return dataclasses.replace(cfg, checkpoint_dir=ckpt, **changes)


def _arch_dataset(validation: Any) -> Dataset | None:
    """The map-style dataset of the architecture updates (held-out: the validation data)."""
    if validation is None:
        return None
    if isinstance(validation, DataLoader):
        return validation.dataset  # type: ignore[return-value]
    if isinstance(validation, (tuple, list)) and len(validation) == 2 \
            and isinstance(validation[0], torch.Tensor):
        return TensorDataset(validation[0], validation[1])
    return validation if isinstance(validation, Dataset) else None


def _first_inputs(data: Iterable) -> torch.Tensor:
    first = next(iter(data))
    return first[0] if isinstance(first, (tuple, list)) else first


def search(model: nn.Module, calibration: Any, validation: Any = None, *,
           evaluate: EvaluateFn | None = None, config: SearchConfig | None = None,
           out_dir: str | Path | None = None, train_data: Iterable | None = None
           ) -> QuantizationResult:
    """Search a mixed-precision Policy by training (AutoQNN QSS/QPL, SSPS) under
    ``config.budget``, fine-tune it and score it on the validation data.

    Args:
        model: the float (pretrained) model; not modified.
        calibration: batches for the initial activation ranges.
        validation: labelled held-out data: the architecture updates draw from it (DNAS
            alternation, when it is a dataset or a loader over one) and the searched policy
            is scored on it. Never the test set.
        evaluate: ``evaluate(model) -> float``, higher is better (default: top-1 % on
            ``validation``). A failing metric is recorded, the trained model is kept.
        config: the :class:`SearchConfig`.
        out_dir: the run directory (checkpoints in ``OUT/ckpt``: a rerun resumes).
        train_data: labelled training batches ``(inputs, labels)`` for the weight updates
            of the search and of the fine-tuning (the extra input of training producers).

    Raises:
        InfeasibleBudgetError: the budget is below the smallest representable model.
        SupernetSpaceError: empty or invalid candidates.
        ConversionError: the model has no quantizable layer.
        NonFiniteLossError: NaN/inf loss (the last good checkpoint is kept).
    """
    cfg = config or SearchConfig()
    if train_data is None:
        raise InputError("search trains: give train_data, labelled (inputs, labels) batches "
                         "(e.g. a DataLoader over the training split)")
    scorer = Scorer(validation, evaluate)
    latency = None
    if cfg.latency_table is not None:
        from bitsmith.export.latency import LatencyTable

        latency = LatencyTable.load(cfg.latency_table)
    out = Path(out_dir) if out_dir is not None else None
    device = resolve_device(cfg.search.device, dist_info()[2])
    we_init = init_distributed(device)
    try:
        outcome, guard = _search(model, calibration, train_data, scorer, cfg, out, latency,
                                 device)
        if out is not None and dist_info()[0] == 0:
            outcome.files = _write_run(outcome, out, cfg, scorer, guard)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    finally:
        if we_init and dist.is_initialized():
            dist.destroy_process_group()
    return _result(outcome, scorer, cfg, guard, out)


def _search(model: nn.Module, calibration: Any, train_data: Iterable, scorer: Scorer,
            cfg: SearchConfig, out: Path | None, latency: Any, device: torch.device
            ) -> tuple[SearchOutcome, dict[str, Any]]:
    """Supernet, warm start, search, derivation, QAT, scoring (and the uniform baseline)."""
    arch_data = _arch_dataset(scorer.validation) if cfg.arch_updates == "validation" else None
    calib = calibration if calibration is not None else train_data
    show = cfg.search.progress and dist_info()[0] == 0  # rank 0 speaks, as in train()
    with stage("search: supernet, every candidate quantizer calibrated", show):
        net = build_supernet(model, _first_inputs(calib), cfg.space, calib,
                             fold_bn=cfg.fold_bn, latency=latency)
    tw = time.perf_counter()
    warm = resolve_warm_start(cfg, model, net, train_data, arch_data, latency,
                              calibration=calibration)
    warm_s = time.perf_counter() - tw
    method_kw = dict(cfg.method_kw)
    if warm is not None:
        method_kw.update(init_policy=warm, init_strength=cfg.warm_start_strength)
    method = make_method(cfg.method, net, cfg.budget, act_budget_bytes=cfg.act_budget_bytes,
                         arch_data=arch_data, arch_batch_size=cfg.arch_batch_size, **method_kw)
    t0 = time.perf_counter()
    sres = train(net.model, train_data, _with_ckpt(cfg.search, out, "search",
                                                   find_unused_parameters=True),
                 callbacks=[method])
    search_s = time.perf_counter() - t0
    with stage("search: deriving the policy (integer program), the fine-tuning model", show):
        derivation = derive_policy(method, latency=latency)
        qmodel = build_qat_model(net, derivation.policy, calib)
    qres, teacher, t1 = None, None, time.perf_counter()
    if cfg.run_qat:
        # Keyed by the policy: a resumed run whose derivation changed starts QAT afresh.
        qcfg = _with_ckpt(cfg.qat, out, f"qat-{derivation.policy.fingerprint()[:12]}")
        teacher = model if qcfg.distill_weight > 0 else None
        qres = train(qmodel, train_data, qcfg, teacher=teacher)
    qat_s = time.perf_counter() - t1
    qmodel.eval()
    with stage("search: FP32 and searched policy scored on the validation data", show):
        fp32 = scorer(model.to(device))
        guard = check_validation(fp32, scorer.examples, None, scorer.is_top1, scorer.name)
        acc, error = _score(scorer, qmodel)
    baseline = None
    if cfg.uniform_baseline and cfg.run_qat:
        baseline = _uniform_baseline(cfg, net, train_data, calibration, scorer, out, teacher,
                                     latency, acc)
    return (SearchOutcome(derivation.policy, derivation, qmodel, net, method, sres, qres, acc,
                          fp32, search_s, qat_s, warm_start=warm, warm_start_seconds=warm_s,
                          baseline=baseline, metric_error=error), guard.to_dict())


def _score(scorer: Scorer, qmodel: nn.Module) -> tuple[float | None, str | None]:
    """``(score, None)``, or ``(None, error)`` when the metric fails: the trained model and
    the run directory are kept, the trial is marked failed."""
    try:
        return scorer(qmodel), None
    except MetricError as err:
        warnings.warn(f"the searched policy could not be scored: {err}", RuntimeWarning,
                      stacklevel=3)
        return None, str(err)


def _failed(error: str | None) -> dict[str, Any]:
    """The extra trial fields of a trial whose metric failed (none otherwise)."""
    return {"state": "FAIL", "error": error} if error else {}


_RULE = ("the policy the search derived: the most probable candidates of the learned "
         "architecture that meet the budget (integer-program repair), then fine-tuned; a "
         "uniform baseline, when trained, is reported next to it, not chosen")


def _result(o: SearchOutcome, scorer: Scorer, cfg: SearchConfig, guard: dict[str, Any],
            out: Path | None) -> QuantizationResult:
    summary = {
        "producer": "search", "chosen": f"{o.method.name}-searched", "rule": _RULE,
        "validation": validation_summary(scorer, o.fp32_accuracy or float("nan"),
                                         o.accuracy),
        "test": None, "cost": cost_summary(o.derivation.cost), "budget": cfg.budget.to_dict(),
        "guard": guard, **{k: v for k, v in o.summary().items()
                           if k not in ("accuracy", "fp32_accuracy", "size_bytes", "bitops",
                                        "avg_weight_bits", "compression")}}
    return QuantizationResult(o.policy, o.qmodel, summary, out, o)


def _uniform_baseline(settings: SearchConfig, net: Supernet, train_loader: Iterable,
                      calibration: Iterable | None, scorer: Scorer, out: Path | None,
                      teacher: nn.Module | None, latency: Any, searched_accuracy: float | None
                      ) -> dict[str, Any]:
    """Fine-tune the dearest uniform policy within the budget with the searched one's recipe.

    Returns ``{"policy", "label", "qmodel", "accuracy", "size_bytes", "bitops",
    "avg_weight_bits", "qat_seconds"}``, or ``{"label": None, "reason": ...}`` when no
    uniform choice of the candidates meets the budget.
    """
    policy = uniform_within_budget(net, settings.budget, latency, settings.act_budget_bytes)
    if policy is None:
        return {"label": None, "reason": "no uniform choice of the candidates meets the budget"}
    t0 = time.perf_counter()
    bq = build_qat_model(net, policy, calibration if calibration is not None else train_loader)
    cfg = _with_ckpt(settings.qat, out, f"qat-baseline-{policy.fingerprint()[:12]}")
    train(bq, train_loader, cfg, teacher=teacher)
    seconds = time.perf_counter() - t0
    bq.eval()
    acc, _ = _score(scorer, bq)
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


def resolve_warm_start(settings: SearchConfig, model: nn.Module, net: Supernet,
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
        raise ConfigError("give the warm start either as SearchConfig.warm_start or as "
                          "method_kw['init_policy'], not both")
    if isinstance(ws, Policy):
        return ws
    from bitsmith.search.warmstart import WARM_METRICS, ilp_warm_start

    if ws not in WARM_METRICS:
        if Path(ws).is_file():
            return Policy.load(ws)
        raise ConfigError(f"warm_start {ws!r}: use none, {', '.join(WARM_METRICS)} or the path "
                          "of a policy file")
    data: Iterable = train_loader
    if arch_data is not None:
        data = DataLoader(arch_data, batch_size=64, shuffle=False)
    alloc = ilp_warm_start(model, net, settings.budget, data, metric=ws,
                           calibration=calibration, act_budget_bytes=settings.act_budget_bytes,
                           latency=latency, max_examples=settings.warm_start_examples,
                           seed=settings.search.seed)
    return alloc.policy


def _write_run(o: SearchOutcome, out: Path, cfg: SearchConfig, scorer: Scorer,
               guard: dict[str, Any]) -> dict[str, str]:
    from bitsmith.rundir import RunWriter

    run = RunWriter(out, model=cfg.labels.get("model", type(o.net.model).__name__),
                    dataset=cfg.labels.get("dataset", ""),
                    eval_set=f"validation: {scorer.describe()}",
                    producer=f"bitsmith search ({o.method.name})", guard=guard,
                    notes={"config": plain(cfg.to_dict()) if not isinstance(
                        cfg.warm_start, Policy) else plain(cfg.replace(
                            warm_start="policy").to_dict())})
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
                  qat_seconds=o.qat_seconds,
                  **_failed(o.metric_error))
    b = o.baseline
    if b is not None and b.get("policy") is not None:
        run.add_trial("uniform-baseline", accuracy=b["accuracy"] if b["accuracy"] is not None
                      else float("nan"), policy=b["policy"], source="baseline:uniform",
                      qat_seconds=b["qat_seconds"])
    run.choose(name, rule=_RULE)
    files = {k: str(v) for k, v in save_result(o.qmodel, out, o.summary()).items()}
    files["layers"] = str(run.write_search_layers(o.method.name, o.derivation.rows))
    return files
