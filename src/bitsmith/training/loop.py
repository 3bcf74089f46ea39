"""The shared training loop of bitsmith's training-time methods (search, QAT, DPQ).

One function, :func:`train`, trains any ``nn.Module`` classifier on ``(inputs, labels)``
batches. Methods plug in through :class:`Callback` objects instead of copying the loop.
The API below is stable (other packages, e.g. ``bitsmith.compress``, build on it).

Public API
----------
``TrainConfig``  plain dataclass of knobs (see its docstring):
    ``epochs`` / ``max_steps``, ``lr``, ``weight_decay``, ``optimizer`` (``"sgd"`` | ``"adamw"``),
    ``momentum``, ``schedule`` (``"cosine"`` | ``"constant"``), ``warmup_steps``,
    ``distill_weight`` + ``distill_temperature`` (KD from an FP32 teacher),
    ``freeze_bn_after`` (steps; BN running statistics frozen from then on),
    ``checkpoint_dir`` + ``checkpoint_every`` (steps), ``resume``, ``grad_clip``,
    ``device`` (``"auto"`` = CUDA if present), ``seed``, ``log_every``, ``progress``,
    ``find_unused_parameters`` (DDP).

``Callback``  base class; every hook is a no-op and receives the live :class:`TrainState`:
    ``on_train_start(state)`` once (after a resume the callback state is already loaded),
    ``on_step_start(state)`` before the forward pass (``state.batch`` is set),
    ``extra_loss(state) -> Tensor | None`` a scalar added to the task loss
    (``state.logits`` and ``state.task_loss`` are set),
    ``after_backward(state)`` gradients exist, before clipping and ``optimizer.step()``,
    ``on_step_end(state)`` after the optimizer step (``state.step`` already incremented),
    ``on_epoch_end(state)`` after each full pass over the data,
    ``state_dict() -> dict`` / ``load_state_dict(dict)`` saved in / restored from checkpoints
    (plain tensors, numbers, strings, lists and dicts only: checkpoints load with
    ``weights_only=True``),
    ``ddp_ignored_parameters(model) -> list[str]`` names of parameters that DDP must not
    synchronise (e.g. architecture parameters trained outside the forward pass); their
    gradients are averaged across ranks by :func:`train` after backward.
    A callback may set ``state.stop = True`` to end training after the current step and may
    put scalars into ``state.metrics``; they are logged to ``TrainResult.history``.

``train(model, train_loader, config, *, teacher=None, val_loader=None, callbacks=(),
param_groups=None) -> TrainResult``
    ``model`` is trained in place (and moved to the device). ``param_groups`` (torch optimizer
    groups) replaces the default grouping (weight decay on tensors with ``ndim > 1`` only;
    biases, BN affine parameters and quantizer step sizes are not decayed).

``TrainResult``  ``steps``, ``epochs``, ``history`` (list of dicts), ``final_loss``,
``val`` (``EvalResult`` or ``None``), ``checkpoint`` (path or ``None``), ``wall_s``,
``resumed_from`` (step or ``None``), ``peak_memory_bytes``.

``NonFiniteLossError``  raised (on every rank) when the loss is NaN/inf; the last good
checkpoint is left untouched and named in the message.

Helpers: ``load_checkpoint(path)`` (``weights_only=True``), ``init_distributed(device)``
(create the process group under torchrun; returns whether it did), ``dist_info()``
(``(rank, world_size, local_rank)``), ``all_reduce_mean(tensor)``, ``distill_loss(s, t, T)``,
``default_param_groups(model, weight_decay)``, ``resolve_device("auto")``.

Loss
----
``loss = (1 - a) * CE(logits, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T))
+ sum(callback.extra_loss)``, with ``a = distill_weight``, ``T = distill_temperature``,
teacher logits ``t`` and student logits ``s`` (Hinton et al. 2015).

Distributed
-----------
Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) :func:`train` initialises the
process group itself if needed (NCCL on GPU, gloo on CPU), wraps the model in
``DistributedDataParallel``, shards a ``DataLoader`` with a ``DistributedSampler`` and lets
only rank 0 write checkpoints, logs and the progress bar (every rank reads the checkpoint
on resume, so ``checkpoint_dir`` must be on a shared file system for multi-node runs). The
same script runs unchanged with or without torchrun. ``max_steps`` counts optimizer steps
(each rank sees ``1 / world_size`` of an epoch's batches).

Resuming
--------
Checkpoints are ``<checkpoint_dir>/last.pt`` (written atomically): model, optimizer, scheduler,
step, epoch, position within the epoch, RNG states (torch, CUDA, numpy, python), callback
states and the history. With ``resume=True`` (default) a run restarts from ``last.pt`` if it
exists. A rebuilt ``DataLoader`` visits the data in an order fixed by ``(seed, epoch)``, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from bitsmith.config import Config, ConfigError
from bitsmith.engine import EvalResult, evaluate
from bitsmith.errors import BitsmithError
from bitsmith.progress import ProgressBar
from bitsmith.training.checkpoint import (
    CHECKPOINT_NAME,
    callback_keys,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bitsmith.training.distributed import (
    all_finite,
    all_reduce_mean,
    barrier,
    dist_info,
    init_distributed,
    resolve_device,
)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


class NonFiniteLossError(BitsmithError, FloatingPointError):
    """The training loss became NaN or inf; the last good checkpoint is kept (exit code 1)."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Knobs of :func:`train`.

    Attributes:
        epochs: passes over the training data (ignored when ``max_steps`` is set).
        max_steps: total optimizer steps; overrides ``epochs`` when given.
        lr: peak learning rate.
        weight_decay: L2 / decoupled weight decay on tensors with ``ndim > 1``.
        optimizer: ``"sgd"`` (with ``momentum``, Nesterov) or ``"adamw"``.
        momentum: SGD momentum (AdamW ignores it).
        schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
        warmup_steps: linear warm-up steps before the schedule.
        distill_weight: weight ``a`` in [0, 1] of the distillation term (0 = no KD).
        distill_temperature: softmax temperature ``T`` of the distillation term.
        freeze_bn_after: from this step on, BatchNorm layers use (and stop updating) their
            running statistics; ``0`` freezes from the start, ``None`` never.
        checkpoint_dir: folder for ``last.pt``; ``None`` = no checkpoints.
        checkpoint_every: write a checkpoint every this many steps (0 = only at the end).
        resume: restart from ``checkpoint_dir/last.pt`` when it exists.
        grad_clip: clip the global gradient norm to this value (``None`` = off).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        seed: seed of parameter initialisation done by callbacks, data order and augmentation.
        log_every: record a history entry every this many steps.
        progress: show a rich progress bar with ETA on rank 0.
        label_smoothing: label smoothing of the cross-entropy term.
        find_unused_parameters: passed to ``DistributedDataParallel`` (needed when some
            parameters do not take part in every forward pass, e.g. single-path supernets).
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 0.01
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    freeze_bn_after: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    grad_clip: float | None = None
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    progress: bool = True
    label_smoothing: float = 0.0
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`~bitsmith.config.ConfigError` naming the first invalid field."""
        if self.max_steps is None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"TrainConfig.epochs must be an integer >= 1, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"TrainConfig.optimizer={self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig.schedule={self.schedule!r}; use one of {SCHEDULES}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"TrainConfig.distill_weight must be in [0, 1], "
                             f"got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise ConfigError("TrainConfig.distill_temperature must be > 0")
        if self.freeze_bn_after is not None and self.freeze_bn_after < 0:
            raise ConfigError("TrainConfig.freeze_bn_after must be >= 0 or None")
        if self.checkpoint_every < 0 or self.warmup_steps < 0 or self.log_every < 1:
            raise ConfigError("TrainConfig: checkpoint_every and warmup_steps must be >= 0, "
                             "log_every >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("TrainConfig.grad_clip must be > 0 or None")



@dataclass
class TrainState:
    """Everything a :class:`Callback` may read (and, with care, change) during training.

    Attributes:
        model: the unwrapped model being trained (never the DDP wrapper).
        wrapped: what the forward pass calls (the DDP wrapper under torchrun, else ``model``).
        optimizer, scheduler: the torch optimizer and LR scheduler.
        config: the :class:`TrainConfig`.
        device: the training device.
        step: optimizer steps done so far (incremented before ``on_step_end``).
        epoch: current epoch index (0-based).
        total_steps: the planned number of steps.
        steps_per_epoch: batches per epoch on this rank.
        batch: the current ``(inputs, labels)`` on ``device``.
        logits: the current student logits ``(N, classes)``.
        task_loss: the CE (+KD) part of the loss, a scalar tensor.
        loss: the total loss of the current step, a scalar tensor.
        teacher: the FP32 teacher or ``None``.
        rank, world_size: distributed rank and size (0 and 1 without torchrun).
        metrics: scalars that callbacks want logged with the next history entry.
        history: the logged entries so far.
        stop: set to ``True`` to stop after the current step.
    """

    model: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    batch: tuple[Tensor, Tensor] | None = None
    logits: Tensor | None = None
    task_loss: Tensor | None = None
    loss: Tensor | None = None
    teacher: nn.Module | None = None
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0


class Callback:
    """Base class of training hooks; override what you need (all default to no-ops)."""

    def on_train_start(self, state: TrainState) -> None:
        """Called once before the first step (after a checkpoint has been restored)."""

    def on_step_start(self, state: TrainState) -> None:
        """Called before the forward pass of every step; ``state.batch`` is set."""

    def extra_loss(self, state: TrainState) -> Tensor | None:
        """A scalar tensor added to the loss of this step, or ``None``."""
        return None

    def after_backward(self, state: TrainState) -> None:
        """Called after ``loss.backward()`` (gradients averaged), before clipping and the step."""

    def on_step_end(self, state: TrainState) -> None:
        """Called after the optimizer and scheduler step; ``state.step`` counts this step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after each complete pass over the training data."""

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints (plain tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def ddp_ignored_parameters(self, model: nn.Module) -> list[str]:
        """Names of ``model`` parameters DDP must skip (train averages their grads itself)."""
        return []


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        epochs: completed passes over the data.
        history: logged entries ``{"step", "epoch", "loss", "task_loss", "lr", ...}``.
        final_loss: mean total loss over the last ``log_every`` steps.
        val: accuracy/loss on ``val_loader`` at the end, or ``None``.
        checkpoint: path of the last checkpoint written, or ``None``.
        wall_s: wall-clock seconds of this call.
        resumed_from: step restored from a checkpoint, or ``None``.
        peak_memory_bytes: peak CUDA memory allocated on GPU, else peak resident set size.
    """

    steps: int
    epochs: int
    history: list[dict[str, float]]
    final_loss: float
    val: EvalResult | None
    checkpoint: Path | None
    wall_s: float
    resumed_from: int | None
    peak_memory_bytes: int


# ----------------------------------------------------------------------------- helpers
def distill_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean; logits ``(N, C)``."""
    t = temperature
    log_p = nn.functional.log_softmax(student / t, dim=1)
    q = nn.functional.softmax(teacher / t, dim=1)
    return nn.functional.kl_div(log_p, q, reduction="batchmean") * (t * t)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weight decay on trainable tensors with ``ndim > 1``, none on the rest."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not any(len(list(g["params"])) for g in groups):
        raise ValueError("train: the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    warm = cfg.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        span = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _Batches:
    """Deterministic per-epoch batching of a ``DataLoader`` (sharded under DDP, resumable).

    A ``DataLoader`` over a sized map-style dataset is rebuilt each epoch with the indices of
    ``DistributedSampler(seed=seed).set_epoch(epoch)`` (also with one process), skipping the
    batches already done. Any other iterable is used as is (resume then skips batches by
    iterating over them).
    """

    def __init__(self, loader: Iterable, seed: int, rank: int, world: int) -> None:
        self.loader = loader
        self.seed = seed
        self.rebuild = (isinstance(loader, DataLoader) and loader.batch_size is not None
                        and hasattr(loader.dataset, "__len__")
                        and not isinstance(loader.dataset, torch.utils.data.IterableDataset))
        self.sampler: DistributedSampler | None = None
        if self.rebuild:
            dl: DataLoader = loader  # type: ignore[assignment]
            if isinstance(dl.sampler, DistributedSampler):
                shuffle = dl.sampler.shuffle
            else:
                shuffle = isinstance(dl.sampler, RandomSampler)
            self.sampler = DistributedSampler(dl.dataset, num_replicas=world, rank=rank,
                                              shuffle=shuffle, seed=seed)
            n = len(self.sampler)
            bs = int(dl.batch_size)  # type: ignore[arg-type]  # checked in self.rebuild
            self.per_epoch = n // bs if dl.drop_last else math.ceil(n / bs)
        else:
            try:
                self.per_epoch = len(loader)  # type: ignore[arg-type]
            except TypeError:
                self.per_epoch = 0

    def epoch(self, epoch: int, skip: int) -> Iterable:
        if not self.rebuild:
            it = iter(self.loader)
            for _ in range(skip):
                next(it, None)
            return it
        dl: DataLoader = self.loader  # type: ignore[assignment]
        assert self.sampler is not None and dl.batch_size is not None
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)[skip * dl.batch_size:]
        return DataLoader(dl.dataset, batch_size=dl.batch_size, sampler=indices,
                          num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                          pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                          generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))


def _set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(not frozen and model.training)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ----------------------------------------------------------------------------- train
def train(
    model: nn.Module,
    train_loader: Iterable,
    config: TrainConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    val_loader: Iterable | None = None,
    callbacks: Sequence[Callback] = (),
    param_groups: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(inputs, labels)`` batches; see the module docstring.

    Args:
        model: a classifier mapping inputs ``(N, ...)`` to logits ``(N, classes)``.
        train_loader: a ``DataLoader`` (rebuilt per epoch for deterministic, resumable,
            DDP-sharded order) or any re-iterable of ``(inputs, labels)`` batches.
        config: the :class:`TrainConfig` (defaults if ``None``).
        teacher: FP32 model for distillation (used when ``config.distill_weight > 0``).
        val_loader: evaluated with :func:`bitsmith.engine.evaluate` after each epoch and at
            the end.
        callbacks: :class:`Callback` hooks, called in order.
        param_groups: optimizer parameter groups; default :func:`default_param_groups`.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        ValueError: invalid configuration, empty data or no trainable parameters.
    """
    cfg = config or TrainConfig()
    cfg.check()
    started = time.perf_counter()
    _, _, local_rank = dist_info()
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    we_initialised = init_distributed(device)
    try:
        loop = _Loop.build(model, train_loader, cfg, device, teacher, val_loader,
                           list(callbacks), param_groups)
        loop.restore()
        loop.run()
        return loop.finish(started)
    finally:
        if we_initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _wrap_ddp(model: nn.Module, callbacks: Sequence[Callback], device: torch.device,
              world: int, find_unused: bool) -> tuple[nn.Module, list[nn.Parameter]]:
    """``(what the forward pass calls, parameters whose gradients train() averages)``.

    Under DDP the callbacks' ignored parameters are broadcast from rank 0 once and then
    skipped by DDP; one process uses the model itself."""
    ignored = [n for cb in callbacks for n in cb.ddp_ignored_parameters(model)]
    named = dict(model.named_parameters())
    ignored_params = [named[n] for n in ignored if n in named]
    if world <= 1:
        return model, ignored_params
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ignored:  # torch's documented (if underscored) way to exclude parameters from DDP
        DDP._set_params_and_buffers_to_ignore_for_model(model, list(ignored))
        with torch.no_grad():  # DDP broadcasts the others from rank 0 itself
            for p in ignored_params:
                torch.distributed.broadcast(p.data, src=0)
    wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=find_unused)
    return wrapped, ignored_params


@dataclass
class _Loop:
    """One :func:`train` call: the pieces its phases (restore, step, end of epoch) share."""

    state: TrainState
    callbacks: list[Callback]
    batches: _Batches
    ignored_params: list[nn.Parameter]
    val_loader: Iterable | None
    ckpt_path: Path | None
    recent: list[float] = field(default_factory=list)
    skip: int = 0                       # batches of the current epoch done before a resume
    in_epoch: int = 0                   # batches of the current epoch done so far
    resumed_from: int | None = None
    last_ckpt: Path | None = None
    last_good_step: int | None = None

    @classmethod
    def build(cls, model: nn.Module, train_loader: Iterable, cfg: TrainConfig,
              device: torch.device, teacher: nn.Module | None, val_loader: Iterable | None,
              callbacks: list[Callback], param_groups: list[dict[str, Any]] | None) -> _Loop:
        """Seed the RNGs, move the models, make the optimizer, schedule and DDP wrapper."""
        rank, world, _ = dist_info()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        model.to(device)
        if teacher is not None:
            teacher.to(device).eval()  # its forward runs under no_grad; requires_grad untouched
        batches = _Batches(train_loader, cfg.seed, rank, world)
        if batches.per_epoch == 0 and cfg.max_steps is None:
            raise ValueError("train: the training data has no batches (or no length); "
                             "give config.max_steps for unsized iterables")
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * batches.per_epoch
        if total < 1:
            raise ValueError("train: the training data is empty (0 batches per epoch)")
        groups = param_groups if param_groups is not None else default_param_groups(
            model, cfg.weight_decay)
        optimizer = _make_optimizer(groups, cfg)
        wrapped, ignored = _wrap_ddp(model, callbacks, device, world, cfg.find_unused_parameters)
        state = TrainState(model=model, wrapped=wrapped, optimizer=optimizer,
                           scheduler=_make_scheduler(optimizer, cfg, total), config=cfg,
                           device=device, total_steps=total, steps_per_epoch=batches.per_epoch,
                           teacher=teacher, rank=rank, world_size=world)
        ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None
        return cls(state, callbacks, batches, ignored, val_loader, ckpt)

    # ------------------------------------------------------------------ restore / save
    def restore(self) -> None:
        """Continue from ``last.pt`` when ``config.resume`` and it exists."""
        st, path = self.state, self.ckpt_path
        if path is None or not st.config.resume or not path.is_file():
            return
        ck = load_checkpoint(path, map_location=st.device)
        st.model.load_state_dict(ck["model"])
        st.optimizer.load_state_dict(ck["optimizer"])
        st.scheduler.load_state_dict(ck["scheduler"])
        st.step, st.epoch = int(ck["step"]), int(ck["epoch"])
        self.skip = self.in_epoch = int(ck["in_epoch"])
        st.history = list(ck.get("history", []))
        for key, cb in zip(callback_keys(self.callbacks), self.callbacks):
            if key in ck["callbacks"]:
                cb.load_state_dict(ck["callbacks"][key])
        set_rng_state(ck["rng"])
        self.recent = [float(v) for v in ck.get("recent", [])]
        self.resumed_from = self.last_good_step = st.step
        self.last_ckpt = path

    def save(self) -> None:
        """Write ``last.pt`` (rank 0; every rank waits for it)."""
        st = self.state
        if self.ckpt_path is None:
            return
        if st.is_main:
            save_checkpoint({
                "step": st.step, "epoch": st.epoch, "in_epoch": self.in_epoch,
                "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(), "rng": rng_state(),
                "callbacks": {k: cb.state_dict() for k, cb in
                              zip(callback_keys(self.callbacks), self.callbacks)},
                "history": st.history, "recent": list(self.recent),
                "config": st.config.to_dict(),
            }, self.ckpt_path)
        barrier(st.world_size)
        self.last_ckpt, self.last_good_step = self.ckpt_path, st.step

    # ------------------------------------------------------------------ one step
    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Forward pass: task loss (CE, + KD) and the callbacks' extra terms."""
        st, cfg = self.state, self.state.config
        logits = st.wrapped(x)
        st.logits = logits
        task = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if st.teacher is not None and cfg.distill_weight > 0:
            with torch.no_grad():
                t_logits = st.teacher(x)
            task = ((1.0 - cfg.distill_weight) * task + cfg.distill_weight
                    * distill_loss(logits, t_logits, cfg.distill_temperature))
        st.task_loss = task
        loss = task
        for cb in self.callbacks:
            extra = cb.extra_loss(st)
            if extra is not None:
                loss = loss + extra
        st.loss = loss
        return loss

    def _check_finite(self, loss: Tensor) -> None:
        st = self.state
        if all_finite(loss, st.world_size):
            return
        where = (f"the last good checkpoint {self.last_ckpt} (step {self.last_good_step}) "
                 "was kept" if self.last_ckpt is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training loss became {loss.item()} at step {st.step} (epoch {st.epoch}); "
            f"stopped, {where}. Lower the learning rate, enable grad_clip or check the data "
            "for NaN/inf.")

    def step(self, batch: Sequence[Tensor]) -> None:
        """One optimizer step on ``batch`` with every callback hook, logging and checkpoint."""
        st, cfg = self.state, self.state.config
        st.batch = (batch[0].to(st.device, non_blocking=True),
                    batch[1].to(st.device, non_blocking=True))
        st.model.train()
        if cfg.freeze_bn_after is not None and st.step >= cfg.freeze_bn_after:
            _set_bn_frozen(st.model, True)
        for cb in self.callbacks:
            cb.on_step_start(st)
        loss = self._loss(*st.batch)
        self._check_finite(loss)
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.ignored_params:
            if p.grad is not None and st.world_size > 1:
                all_reduce_mean(p.grad)
        for cb in self.callbacks:
            cb.after_backward(st)
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(
                [p for g in st.optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        st.optimizer.step()
        st.scheduler.step()
        st.step += 1
        self.in_epoch += 1
        self.recent = ([*self.recent, float(loss.detach())])[-cfg.log_every:]
        for cb in self.callbacks:
            cb.on_step_end(st)
        if st.step % cfg.log_every == 0 or st.step == st.total_steps:
            st.history.append({"step": st.step, "epoch": st.epoch,
                               "loss": float(np.mean(self.recent)),
                               "task_loss": float(st.task_loss.detach())
                               if st.task_loss is not None else math.nan,
                               "lr": float(st.optimizer.param_groups[0]["lr"]), **st.metrics})
            st.metrics = {}
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
            self.save()

    # ------------------------------------------------------------------ epochs
    def end_of_epoch(self, batches_seen: int) -> None:
        """The epoch's data ran out: callbacks, validation, next epoch."""
        st = self.state
        if batches_seen == 0:
            raise ValueError("train: the training data yielded no batch")
        for cb in self.callbacks:
            cb.on_epoch_end(st)
        st.epoch += 1
        self.skip = self.in_epoch = 0
        if self.val_loader is not None and st.step < st.total_steps:
            r = evaluate(st.model, self.val_loader, device=st.device)
            st.history.append({"step": st.step, "epoch": st.epoch,
                               "val_accuracy": r.accuracy, "val_loss": r.loss})

    def _done(self) -> bool:
        return self.state.step >= self.state.total_steps or self.state.stop

    def run(self) -> None:
        """Steps until ``total_steps`` or a callback sets ``state.stop``."""
        st = self.state
        st.model.train()
        for cb in self.callbacks:
            cb.on_train_start(st)
        with ProgressBar("train", st.total_steps, enabled=st.config.progress and st.is_main,
                         unit="steps", completed=st.step) as bar:
            while not self._done():
                seen = 0
                for batch in self.batches.epoch(st.epoch, self.skip):
                    if self._done():
                        break
                    self.step(batch)
                    seen += 1
                    bar.update(st.step, f"loss {np.mean(self.recent):.4f}")
                else:
                    self.end_of_epoch(seen + self.skip)
                    continue
                break

    def finish(self, started: float) -> TrainResult:
        """Final checkpoint and validation; the :class:`TrainResult`."""
        st = self.state
        st.model.train()
        if st.step > (self.last_good_step if self.last_good_step is not None else -1):
            self.save()
        val_result: EvalResult | None = None
        if self.val_loader is not None:
            val_result = evaluate(st.model, self.val_loader, device=st.device)
            st.history.append({"step": st.step, "epoch": st.epoch,
                               "val_accuracy": val_result.accuracy, "val_loss": val_result.loss})
        st.model.eval()
        return TrainResult(steps=st.step, epochs=st.epoch, history=st.history,
                           final_loss=float(np.mean(self.recent)) if self.recent else math.nan,
                           val=val_result, checkpoint=self.last_ckpt,
                           wall_s=time.perf_counter() - started,
                           resumed_from=self.resumed_from,
                           peak_memory_bytes=_peak_memory(st.device))
