"""One call for the whole DPQ flow: quantize, prune gradually, re-choose bits, fine-tune.

:func:`compress` is the producer contract (``bitsmith compress``); :func:`compress_model`
the flow itself (the benchmark calls it directly):

1. ``bitsmith.quantize`` the FP32 model (BN folded) with DPQ weight quantizers (8 bits to
   start) and calibrated ``uniform_asymmetric`` activations;
2. fine-tune with the shared loop :func:`bitsmith.training.train`, distilling from the
   FP32 model, while :class:`~bitsmith.compress.callbacks.DPQCallback` prunes along the cubic
   schedule (target sparsity at ``prune_end`` of the steps), keeps pruned weights at zero,
   re-chooses the bits under the size budget, and applies RPC to the activations;
3. return the compressed model and its honest size (:func:`compression_report`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from bitsmith.compress.accounting import compression_report, sync_sparsity
from bitsmith.compress.bits import DEFAULT_BITS
from bitsmith.compress.callbacks import DPQCallback
from bitsmith.compress.dpq import dpq_spec, install_dpq
from bitsmith.compress.pruning import SCOPES, CompressError, CubicSchedule, check_sparsity
from bitsmith.compress.rpc import RPCSchedule
from bitsmith.config import Config
from bitsmith.cost import CostReport
from bitsmith.errors import InputError
from bitsmith.graph import quantized_layers
from bitsmith.inputs import MetricError
from bitsmith.policy import LayerSpec, Policy, QSpec
from bitsmith.progress import stage
from bitsmith.quantize import iter_batches, prepare, quant_info, quantize
from bitsmith.result import QuantizationResult, cost_summary, plain, validation_summary
from bitsmith.scoring import EvaluateFn, Scorer, check_validation
from bitsmith.training import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class CompressConfig(Config):
    """Knobs of :func:`compress` (YAML-loadable).

    Attributes:
        sparsity: final fraction of pruned weights in the pruned layers, ``[0, 1)``.
        ratio: target compression ``FP32 bytes / size``; the size budget is
            ``fp32_bytes / ratio`` (ignored when ``budget_bytes`` is set; ``None`` with no
            ``budget_bytes`` = bits stay at ``fixed_bits``).
        budget_bytes: size budget in bytes (cost model = packed artifact payload).
        bits: candidate weight bit widths (2..8) of the dynamic allocation.
        fixed_bits: weight bits when no budget is given.
        act_bits: activation bits (``uniform_asymmetric``, per tensor); ``0`` = float.
        scope: ``"layer"`` (same sparsity per layer) or ``"global"`` (one threshold).
        structured: prune whole output channels instead of single weights.
        min_params: layers with fewer weights are not pruned (e.g. the first conv).
        two_level: per-channel correction factors on top of the coarse scale.
        pseudo_mean: coarse scale from the survivors' mean (else all weights' mean).
        rpc: random partial activation quantization during fine-tuning.
        rpc_start: quantized fraction of activations at step 0 (rises to 1).
        rpc_full_at: fraction of the steps after which activations are fully quantized.
        prune_end: fraction of the steps at which the target sparsity is reached.
        prune_every: steps between mask updates (0 = about 20 updates).
        realloc_every: extra bit re-allocation every this many steps (0 = when masks change).
        calib_batches: calibration batches for the activation ranges.
        train: the fine-tuning loop's :class:`TrainConfig` (``None``: one shot, no
            fine-tuning: prune to the target and choose bits at once).
        labels: names shown in the run directory and report (``model``, ``dataset``).
        progress: a line per set-up and scoring step (:mod:`bitsmith.progress`); the
            fine-tuning loop's own bar is ``train.progress``.
    """

    sparsity: float = 0.75
    ratio: float | None = 15.0
    budget_bytes: float | None = None
    bits: tuple[int, ...] = DEFAULT_BITS
    fixed_bits: int = 8
    act_bits: int = 8
    scope: str = "layer"
    structured: bool = False
    min_params: int = 1000
    two_level: bool = True
    pseudo_mean: bool = True
    rpc: bool = True
    rpc_start: float = 0.5
    rpc_full_at: float = 0.8
    prune_end: float = 0.5
    prune_every: int = 0
    realloc_every: int = 0
    calib_batches: int | None = 8
    train: TrainConfig | None = None
    labels: dict[str, str] = field(default_factory=dict)
    progress: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`CompressError` naming the first invalid field."""
        check_sparsity(self.sparsity)
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                    or not math.isfinite(self.ratio) or self.ratio < 1.0:
                raise CompressError(
                    f"ratio={self.ratio!r} is not a valid compression target: give FP32 bytes "
                    "/ compressed bytes as a number >= 1, e.g. 15 for 15x")
        if self.budget_bytes is not None and not (
                isinstance(self.budget_bytes, (int, float)) and self.budget_bytes > 0
                and math.isfinite(self.budget_bytes)):
            raise CompressError(f"budget_bytes={self.budget_bytes!r} must be a positive "
                                "number of bytes")
        if not self.bits or any(not 2 <= int(b) <= 8 for b in self.bits):
            raise CompressError(f"bits={self.bits!r}: candidate bit widths must lie in 2..8")
        if not 2 <= self.fixed_bits <= 8:
            raise CompressError(f"fixed_bits={self.fixed_bits} must lie in 2..8")
        if self.act_bits != 0 and not 2 <= self.act_bits <= 8:
            raise CompressError(f"act_bits={self.act_bits} must be 0 (float) or 2..8")
        if self.scope not in SCOPES:
            raise CompressError(f"scope={self.scope!r} is unknown; use one of {SCOPES}")
        if not 0.0 < self.prune_end <= 1.0:
            raise CompressError(f"prune_end={self.prune_end} must be in (0, 1]")
        RPCSchedule(self.rpc_start, self.rpc_full_at)  # validates



@dataclass
class CompressResult:
    """What :func:`compress_model` returns.

    Attributes:
        model: the compressed (quantized, pruned) model, eval mode; ``model.bitsmith.policy``.
        cost: its cost report with the actual masks (``size_bytes`` = packed payload).
        budget_bytes: the size budget (``None`` without one).
        sparsity: pruned fraction over the pruned layers.
        bits: ``layer -> weight bits``.
        events: pruning / bit-allocation events during fine-tuning.
        train: the :class:`TrainResult` (``None`` without fine-tuning).
    """

    model: nn.Module
    cost: CostReport
    budget_bytes: float | None
    sparsity: float
    bits: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    train: TrainResult | None = None

    @property
    def compression(self) -> float:
        return self.cost.compression


def initial_policy(layer_names: list[str], config: CompressConfig) -> Policy:
    """Every layer: DPQ weights at ``fixed_bits``, activations at ``act_bits`` (0 = float)."""
    act = None if config.act_bits == 0 else QSpec("uniform_asymmetric", config.act_bits)
    return Policy({n: LayerSpec(dpq_spec(config.fixed_bits, config.two_level), act)
                   for n in layer_names})


def prunable_layers(model: nn.Module, min_params: int) -> list[str]:
    """Quantized layers with at least ``min_params`` weights."""
    return [n for n, m in quantized_layers(model).items() if m.weight.numel() >= min_params]


def compress_model(model: nn.Module, calib_data: Any, train_loader: Any,
                   config: CompressConfig, train_config: TrainConfig | None = None, *,
                   teacher: nn.Module | None = None, val_loader: Any = None) -> CompressResult:
    """Prune + DPQ-quantize ``model`` and fine-tune it; see the module docstring.

    Args:
        model: the FP32 model (not changed).
        calib_data: calibration batches (activation ranges), e.g. a DataLoader.
        train_loader: fine-tuning batches ``(inputs, labels)``; with ``train_config=None``
            no fine-tuning happens (one-shot pruning and bit choice).
        config: the :class:`CompressConfig`.
        train_config: the shared loop's :class:`TrainConfig`.
        teacher: distillation teacher (default: a copy of ``model``, when
            ``train_config.distill_weight > 0``).
        val_loader: validation batches evaluated by the loop after each epoch.

    Raises:
        CompressError: bad settings; ``InfeasibleBudgetError`` when the budget cannot
            be met at this sparsity even at the lowest bits (raised before any training).
    """
    config.check()
    with stage("compress: calibration and DPQ quantizers", config.progress):
        example = next(iter_batches(calib_data, 1))
        _, table, _ = prepare(model, example)
        policy = initial_policy(table.names, config)
        qmodel = quantize(model, policy, example_inputs=example, calibration=calib_data,
                          num_batches=config.calib_batches)
        install_dpq(qmodel, pseudo=config.pseudo_mean)
    fp32 = compression_report(qmodel).fp32_bytes
    budget = config.budget_bytes
    if budget is None and config.ratio is not None:
        budget = fp32 / config.ratio
    prune = prunable_layers(qmodel, config.min_params) if config.sparsity > 0 else []
    total = 1
    if train_config is not None:
        total = train_config.max_steps or train_config.epochs * len(train_loader)
    end = max(1, int(round(config.prune_end * total)))
    schedule = (CubicSchedule(config.sparsity, 0, end, 0.0,
                              config.prune_every or max(1, end // 20))
                if prune else None)
    cb = DPQCallback(
        qmodel, prune, schedule, config.scope, config.structured, budget, config.bits,
        bit_layers=list(quantized_layers(qmodel)), realloc_every=config.realloc_every,
        rpc=RPCSchedule(config.rpc_start, config.rpc_full_at) if config.rpc else None,
        two_level=config.two_level, pseudo=config.pseudo_mean)
    # raise InfeasibleBudgetError before any training
    if budget is not None and schedule is not None:
        cb.stage_budget()
    elif budget is not None:
        cb._prune_to(0.0)
        cb._reallocate(0)
    result_train = None
    if train_config is None:  # one shot: prune to the target, choose bits
        one_shot = CubicSchedule(config.sparsity, 0, 0) if prune else None
        cb.schedule = one_shot
        cb._prune_to(config.sparsity if prune else 0.0)
        cb._reallocate(0)
    else:
        if teacher is None and train_config.distill_weight > 0:
            teacher = copy.deepcopy(model).eval()
        result_train = train(qmodel, train_loader, train_config, teacher=teacher,
                             val_loader=val_loader, callbacks=[cb])
        if budget is not None and compression_report(qmodel).size_bytes > budget:
            cb._reallocate(result_train.steps)  # e.g. stopped before the final sparsity
    cb.finish()
    sync_sparsity(qmodel)
    qmodel.eval()
    cost = compression_report(qmodel)
    bits = {n: m.layer_spec.weight.bits for n, m in quantized_layers(qmodel).items()
            if m.layer_spec.weight is not None}
    return CompressResult(model=qmodel, cost=cost, budget_bytes=budget, sparsity=cb.sparsity,
                          bits=bits, events=cb.events, train=result_train)


def compress(model: nn.Module, calibration: Any, validation: Any = None, *,
             evaluate: EvaluateFn | None = None, config: CompressConfig | None = None,
             out_dir: str | Path | None = None, train_data: Any = None) -> QuantizationResult:
    """DPQ: prune and quantize ``model`` under a size budget, fine-tune, score on validation.

    Args:
        model: the FP32 model (not changed).
        calibration: calibration batches (activation ranges), e.g. a DataLoader.
        validation: labelled validation data the result is scored on (never the test set).
        evaluate: ``evaluate(model) -> float``, higher is better (default: top-1 % on
            ``validation``). A failing metric is recorded; the compressed model is kept.
        config: the :class:`CompressConfig` (``config.train`` = the fine-tuning loop's
            config, ``None`` for one shot).
        out_dir: the run directory (``bitsmith report OUT_DIR``).
        train_data: labelled training batches for the fine-tuning (the extra input of a
            training producer; needed when ``config.train`` is set).

    Raises:
        CompressError: bad settings; InfeasibleBudgetError: the budget cannot be met at
            this sparsity even at the lowest bits (raised before any training).
    """
    cfg = config or CompressConfig()
    if cfg.train is not None and train_data is None:
        raise InputError("compress fine-tunes: give train_data (labelled batches), or "
                         "CompressConfig(train=None) for one shot")
    scorer = Scorer(validation, evaluate)
    t0 = time.perf_counter()
    res = compress_model(model, calibration, train_data, cfg, cfg.train)
    with stage("compress: FP32 and compressed model scored on the validation data",
               cfg.progress):
        fp32 = scorer(model)
        guard = check_validation(fp32, scorer.examples, None, scorer.is_top1, scorer.name)
        score, error = None, None
        try:
            score = scorer(res.model)
        except MetricError as err:
            warnings.warn(f"the compressed model could not be scored: {err}", RuntimeWarning,
                          stacklevel=2)
            error = str(err)
    policy = quant_info(res.model).policy
    rule = ("the one policy DPQ produced: bits re-chosen under the size budget by the "
            "integer program as pruning advanced, then fine-tuned")
    summary = {
        "producer": "compress", "chosen": "dpq", "rule": rule,
        "validation": validation_summary(scorer, fp32, score), "test": None,
        "cost": cost_summary(res.cost), "budget": {"size_bytes": res.budget_bytes},
        "guard": guard.to_dict(), "sparsity": res.sparsity, "bits": res.bits,
        "events": res.events, "metric_error": error, "config": plain(cfg.to_dict()),
        "seconds": time.perf_counter() - t0}
    run_dir = None
    if out_dir is not None:
        run_dir = _write_run(Path(out_dir), res, fp32, score, summary, cfg, model)
    return QuantizationResult(policy, res.model, summary, run_dir, res)


def _failed(error: str | None) -> dict[str, Any]:
    """The extra trial fields of a trial whose metric failed (none otherwise)."""
    return {"state": "FAIL", "error": error} if error else {}


def _write_run(out: Path, res: CompressResult, fp32: float, score: float | None,
               summary: dict[str, Any], cfg: CompressConfig, model: nn.Module) -> Path:
    from bitsmith.compress.accounting import mask_layouts
    from bitsmith.rundir import RunWriter

    qmodel = res.model
    run = RunWriter(out, model=cfg.labels.get("model", type(model).__name__),
                    dataset=cfg.labels.get("dataset", ""),
                    eval_set=f"validation: {summary['validation']['metric']}",
                    producer="bitsmith compress", guard=summary["guard"],
                    notes={"config": summary["config"]})
    run.write_layers(quant_info(qmodel).layer_table)
    run.set_fp32(accuracy=fp32, size_bytes=res.cost.fp32_bytes)
    run.add_trial("dpq", accuracy=score if score is not None else float("nan"),
                  policy=quant_info(qmodel).policy, source="dpq", size_bytes=res.cost.size_bytes,
                  compression=res.cost.compression, avg_weight_bits=res.cost.avg_weight_bits,
                  sparsity=res.sparsity,
                  **_failed(summary["metric_error"]))
    run.choose("dpq", rule=summary["rule"])
    run.write_masks(mask_layouts(qmodel))
    return out
