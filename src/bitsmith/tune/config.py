"""``TuneConfig``: every knob of :func:`bitsmith.tune.tune` as one frozen, YAML-loadable config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bitsmith.config import Config, ConfigError
from bitsmith.policy import Policy
from bitsmith.tune.objectives import Objective
from bitsmith.tune.samplers import STRATEGIES
from bitsmith.tune.space import TuneSpace


@dataclass(frozen=True)
class TuneConfig(Config):
    """Knobs of the post-training tuner (``bitsmith tune``; docs/tune.md).

    Attributes:
        space: a :class:`TuneSpace` or its mapping form (``{"preset": "mixed", ...}``).
        objective: ``min_cost`` (smallest ``metric`` within ``tolerance`` points of FP32),
            ``max_accuracy`` (most accurate with ``metric <= budget``) or ``pareto``.
        metric: the cost: ``size`` (bytes), ``bitops`` or ``latency`` (ms; needs
            ``backend="onnxruntime"``).
        tolerance: allowed drop in the validation score (points of top-1), ``min_cost``.
        budget: the cost limit of ``max_accuracy`` in the metric's unit.
        strategy: ``random``, ``grid``, ``genetic``, ``tpe`` or ``xgboost`` (Quantune).
        n_trials: the study's trial budget (all workers together).
        timeout: seconds after which this worker starts no new trial.
        storage: Optuna storage URL shared by workers (default: ``OUT/study.db``).
        study_name: name of the shared study.
        seed: sampler seed (``None``: random).
        stages: validation stages for early stopping (fractions or example counts).
        prune, prune_margin: stop a configuration more than ``prune_margin`` points past
            the tolerance after the first stage.
        backend: ``torch`` (fake quantization) or ``onnxruntime`` (integer kernels).
        init_policies: warm-start policies (or their files), enqueued first.
        transfer: ``transfer.json`` files of earlier studies for the cost model.
        progress: show progress (bar on a terminal, plain lines elsewhere).
        save_model: write the chosen quantized model (safetensors) into the run directory.
        heartbeat_interval: seconds between heartbeats of a running trial.
        labels: names shown in the run directory and report (``model``, ``dataset``,
            ``eval_set``).
    """

    space: TuneSpace | dict[str, Any] = field(default_factory=lambda: {"preset": "mixed"})
    objective: Literal["min_cost", "max_accuracy", "pareto"] = "min_cost"
    metric: Literal["size", "bitops", "latency"] = "size"
    tolerance: float = 1.0
    budget: float | None = None
    strategy: str = "xgboost"
    n_trials: int = 100
    timeout: float | None = None
    storage: str | None = None
    study_name: str = "bitsmith-tune"
    seed: int | None = 0
    stages: tuple[float, ...] = (0.25, 1.0)
    prune: bool = True
    prune_margin: float = 2.0
    backend: Literal["torch", "onnxruntime"] = "torch"
    init_policies: tuple[Policy | Path, ...] = ()
    transfer: tuple[Path, ...] = ()
    progress: bool = True
    save_model: bool = True
    heartbeat_interval: int = 5
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"TuneConfig.strategy {self.strategy!r} is unknown; use one of "
                              f"{', '.join(STRATEGIES)}")
        if self.n_trials < 1:
            raise ConfigError(f"TuneConfig.n_trials must be >= 1, got {self.n_trials}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"TuneConfig.timeout must be > 0 seconds, got {self.timeout}")
        self.make_objective()  # validates tolerance / budget

    def make_objective(self) -> Objective:
        """The :class:`Objective` these fields describe."""
        return Objective(self.objective, self.metric, tolerance=self.tolerance,
                         budget=self.budget)

    def make_space(self) -> TuneSpace:
        """The :class:`TuneSpace` (built from the mapping form when needed)."""
        return self.space if isinstance(self.space, TuneSpace) else TuneSpace.from_dict(
            self.space)

    def warm_starts(self) -> list[Policy]:
        """``init_policies`` as Policy objects (files loaded)."""
        return [p if isinstance(p, Policy) else Policy.load(p) for p in self.init_policies]
