"""Search strategies, each an Optuna sampler: random, grid, genetic, TPE, XGBoost cost model.

:class:`XGBoostSampler` is Quantune's strategy (Lee et al., FGCS 2022): an
XGBoost regression of "configuration -> accuracy drop" on one-hot
configuration features plus model-graph descriptors
(:mod:`bitsmith.tune.features`), refit after every measurement, trained also on
measurements of *other* models (transfer learning: :class:`TransferRecord`),
and it always proposes the **top predicted unexplored configuration**.
Beyond Quantune, the cost of a candidate (size, BitOPs) is analytic, so the
acquisition ranks candidates by the objective evaluated on the predicted drop
and the *exact* cost (:meth:`bitsmith.tune.objectives.Objective.acquisition`):
e.g. "the smallest configuration predicted to be within tolerance".

Candidates: every unexplored configuration when the space is small enough to
enumerate (``<= enumerate_limit``), else ``n_candidates / 2`` random ones (per-layer
bit widths drawn around one common width) plus mutations (1-3 knobs changed) of the
best measured ones; the startup trials use the same random draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import (
    BaseSampler,
    GridSampler,
    NSGAIISampler,
    RandomSampler,
    TPESampler,
)
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from bitsmith.tune.errors import TuneError
from bitsmith.tune.features import ConfigEncoder
from bitsmith.tune.objectives import Objective
from bitsmith.tune.space import Choices, TuneSpace, config_key

STRATEGIES = ("random", "grid", "genetic", "tpe", "xgboost")
DROP_ATTR = "drop"          # user attr holding the measured accuracy drop (points)

# cost_fn(config) -> (cost in the objective's metric unit, FP32 cost in the same unit)
CostFn = Callable[[Choices], tuple[float, float]]


@dataclass(frozen=True)
class TransferRecord:
    """One measurement of another model, to seed the cost model of a new study.

    Attributes:
        config: the configuration (same space).
        drop: its measured accuracy drop in points.
        descriptors: :func:`~bitsmith.tune.features.model_descriptors` of that model.
        layer_names: that model's quantizable layers, in order.
        weight_params: that model's layer name -> number of weights.
    """

    config: Mapping[str, Any]
    drop: float
    descriptors: Mapping[str, float]
    layer_names: Sequence[str] = ()
    weight_params: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": dict(self.config), "drop": self.drop,
                "descriptors": dict(self.descriptors), "layer_names": list(self.layer_names),
                "weight_params": dict(self.weight_params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransferRecord:
        try:
            return cls(d["config"], float(d["drop"]), d["descriptors"],
                       d.get("layer_names", ()), d.get("weight_params", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise TuneError(f"bad transfer record {dict(d)!r}: {err}") from None


class _GridSampler(GridSampler):
    """Optuna's GridSampler, without its ``study.stop()`` on an exhausted grid (the tuner's
    own loop ends on its trial budget; ``stop`` only works inside ``Study.optimize``)."""

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


class XGBoostSampler(BaseSampler):
    """Quantune's gradient-boosted cost-model strategy as an Optuna sampler.

    Args:
        space: the search space.
        encoder: feature encoder of this model's configurations.
        objective: what the acquisition optimises (with the exact cost from ``cost_fn``).
        cost_fn: ``config -> (cost, fp32 cost)``; ``None`` scores by accuracy alone.
        accuracy_ref: the float model's validation accuracy (percent).
        transfer: measurements of other models (Quantune's transfer learning).
        n_startup_trials: random trials before the model is used (only when there
            are fewer than ``n_startup_trials`` transfer records).
        n_candidates: candidates scored per trial when the space is too big to enumerate.
        enumerate_limit: enumerate every configuration up to this space size.
        own_weight: sample weight of this study's rows relative to transfer rows (1).
        seed: random seed.
    """

    def __init__(self, space: TuneSpace, encoder: ConfigEncoder, objective: Objective, *,
                 cost_fn: CostFn | None = None, accuracy_ref: float = 100.0,
                 transfer: Sequence[TransferRecord] = (), n_startup_trials: int = 5,
                 n_candidates: int = 600, enumerate_limit: int = 20_000,
                 own_weight: float = 4.0, seed: int | None = None,
                 xgb_params: Mapping[str, Any] | None = None) -> None:
        self.space = space
        self.encoder = encoder
        self.objective = objective
        self.cost_fn = cost_fn
        self.accuracy_ref = float(accuracy_ref)
        self.dims = space.dimensions(encoder.layer_names)
        self.distributions = {n: CategoricalDistribution(list(c)) for n, c in self.dims.items()}
        self.n_startup_trials = int(n_startup_trials)
        self.n_candidates = int(n_candidates)
        self.own_weight = float(own_weight)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self.xgb_params = {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1,
                           "subsample": 1.0, "min_child_weight": 1.0, "n_jobs": 1,
                           **(xgb_params or {})}
        self._all: list[Choices] | None = None
        if space.size(encoder.layer_names) <= enumerate_limit:
            self._all = list(space.grid(encoder.layer_names, limit=enumerate_limit))
        self._transfer_x = np.stack([
            encoder.encode_foreign(dict(r.config), r.descriptors,
                                   r.layer_names or encoder.layer_names, r.weight_params)
            for r in transfer
        ]) if transfer else np.zeros((0, len(encoder.columns)), dtype=np.float32)
        self._transfer_y = np.array([r.drop for r in transfer], dtype=np.float32)
        self._cost_cache: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------- optuna API
    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return dict(self.distributions)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False)
        measured = [t for t in trials if DROP_ATTR in t.user_attrs
                    and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                    and all(n in t.params for n in self.dims)]
        if len(measured) + len(self._transfer_y) < self.n_startup_trials:
            if self._all is not None:
                return {}                                   # independent uniform sampling
            start = self._random_config()
            return {k: v for k, v in start.items() if k in search_space}
        seen = {config_key(t.params) for t in trials if t.params and t.number != trial.number}
        fixed = trial.system_attrs.get("fixed_params", {}) or {}
        candidates = self._candidates(measured, seen, fixed)
        if not candidates:
            return {}
        model = self._fit(measured)
        pred = model.predict(self.encoder.encode_many(candidates))
        scores = self._acquire(candidates, pred, self._incumbent(measured))
        if not np.isfinite(scores.max()):           # nothing improves: greedy fallback
            scores = self._acquire(candidates, pred)
        best = np.flatnonzero(scores == scores.max())
        choice = candidates[int(self._rng.choice(best))]
        return {k: v for k, v in choice.items() if k in search_space}

    # -------------------------------------------------------------- internals
    def _fit(self, measured: Sequence[FrozenTrial]) -> Any:
        import xgboost

        own_x = self.encoder.encode_many([t.params for t in measured])
        own_y = np.array([float(t.user_attrs[DROP_ATTR]) for t in measured], dtype=np.float32)
        x = np.concatenate([self._transfer_x, own_x])
        y = np.concatenate([self._transfer_y, own_y])
        w = np.concatenate([np.ones(len(self._transfer_y)),
                            np.full(len(own_y), self.own_weight)])
        model = xgboost.XGBRegressor(**self.xgb_params,
                                     random_state=int(self._rng.integers(2**31 - 1)))
        model.fit(x, y, sample_weight=w)
        return model

    def _cost(self, config: Choices) -> tuple[float, float]:
        key = config_key(config)
        if key not in self._cost_cache:
            self._cost_cache[key] = self.cost_fn(config) if self.cost_fn else (1.0, 1.0)
        return self._cost_cache[key]

    def _acquire(self, candidates: Sequence[Choices], pred: np.ndarray,
                 incumbent: float | None = None) -> np.ndarray:
        """Score candidates (higher is better) from predicted drops and exact costs.

        ``min_cost`` with a feasible incumbent of relative cost ``incumbent``: expected
        improvement under the feasibility constraint, ``(incumbent - cost / fp32) *
        P(drop <= tolerance)`` with ``P = Phi((tolerance - predicted) / sigma)``,
        ``sigma = max(0.25, tolerance / 2)`` points — so the sampler keeps pushing the
        cost down instead of re-sampling cost-neutral knobs at the incumbent's size.
        Otherwise (and for the other objectives) the objective on the predicted drop
        (Quantune's greedy "top predicted").
        """
        weight = float(self._rng.uniform()) if self.objective.kind == "pareto" else 0.5
        out = np.empty(len(candidates))
        tol = float(self.objective.tolerance or 0.0)
        sigma = max(0.25, tol / 2)
        for i, (c, d) in enumerate(zip(candidates, pred)):
            cost, fp32 = self._cost(c)
            if incumbent is not None:
                gain = incumbent - cost / fp32
                p_ok = 0.5 * math.erfc(-(tol - float(d)) / (sigma * math.sqrt(2)))
                out[i] = gain * p_ok if gain > 0 else -math.inf
            else:
                out[i] = self.objective.acquisition(float(d), self.accuracy_ref, cost, fp32,
                                                    weight)
        out[~np.isfinite(out)] = -math.inf
        return out

    def _incumbent(self, measured: Sequence[FrozenTrial]) -> float | None:
        """Relative cost of the best feasible measured configuration (``min_cost`` only)."""
        if self.objective.kind != "min_cost" or self.cost_fn is None:
            return None
        tol = self.objective.max_drop
        costs = [self._cost(t.params) for t in measured
                 if t.state == TrialState.COMPLETE and float(t.user_attrs[DROP_ATTR]) <= tol]
        return min((c / f for c, f in costs), default=None)

    def _random_config(self) -> Choices:
        """A random configuration; per-layer knobs are drawn *around one common choice*
        (each layer moves one step from it with probability 0.3), so that random
        mixed-precision candidates are plausible policies rather than a 2-bit layer in
        every other place."""
        out: Choices = {}
        base: dict[int, int] = {}
        for n, c in self.dims.items():
            if ":" not in n:
                out[n] = c[int(self._rng.integers(len(c)))]
                continue
            i = base.setdefault(len(c), int(self._rng.integers(len(c))))
            step = int(self._rng.choice([-1, 0, 1], p=[0.15, 0.7, 0.15]))
            out[n] = c[min(max(i + step, 0), len(c) - 1)]
        return out

    def _mutate(self, config: Choices) -> Choices:
        out = dict(config)
        names = list(self.dims)
        for _ in range(int(self._rng.integers(1, 4))):
            n = names[int(self._rng.integers(len(names)))]
            out[n] = self.dims[n][int(self._rng.integers(len(self.dims[n])))]
        return out

    def _candidates(self, measured: Sequence[FrozenTrial], seen: set[str],
                    fixed: Mapping[str, Any]) -> list[Choices]:
        if self._all is not None:
            pool = self._all
        else:
            pool = [self._random_config() for _ in range(self.n_candidates // 2)]
            ranked = sorted(measured, key=lambda t: float(t.user_attrs[DROP_ATTR]))
            tops = [t.params for t in ranked[:5]]
            if self.cost_fn is not None and measured:
                scored = [(self._acquire([t.params], np.array([t.user_attrs[DROP_ATTR]]))[0],
                           t.params) for t in measured]
                tops += [p for _, p in sorted(scored, key=lambda s: -s[0])[:5]]
            for i in range(self.n_candidates - len(pool)):
                if not tops:
                    break
                pool.append(self._mutate(tops[i % len(tops)]))
        out, keys = [], set()
        for c in pool:
            if any(c.get(k) != v for k, v in fixed.items()):
                continue
            key = config_key(c)
            if key in seen or key in keys:
                continue
            keys.add(key)
            out.append(c)
        return out


def make_sampler(strategy: str, space: TuneSpace, encoder: ConfigEncoder,
                 objective: Objective, *, seed: int | None = None,
                 cost_fn: CostFn | None = None, accuracy_ref: float = 100.0,
                 transfer: Sequence[TransferRecord] = (), n_trials: int = 100,
                 ) -> BaseSampler:
    """The Optuna sampler of a named strategy.

    ``random``: :class:`optuna.samplers.RandomSampler`; ``grid``:
    :class:`optuna.samplers.GridSampler` over every configuration (finite spaces
    only); ``genetic``: :class:`optuna.samplers.NSGAIISampler` (a genetic
    algorithm; single- or multi-objective), population ``max(4, n_trials // 8)``
    capped at 20; ``tpe``: :class:`optuna.samplers.TPESampler` (multivariate);
    ``xgboost``: :class:`XGBoostSampler`.
    """
    if strategy not in STRATEGIES:
        raise TuneError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    names = encoder.layer_names
    if space.size(names) < 1:
        raise TuneError("the search space is empty")
    if strategy == "random":
        return RandomSampler(seed=seed)
    if strategy == "grid":
        space.grid(names).__next__()  # raises SpaceError when too big to enumerate
        return _GridSampler({n: list(c) for n, c in space.dimensions(names).items()}, seed=seed)
    if strategy == "genetic":
        population = int(min(20, max(4, n_trials // 8)))
        return NSGAIISampler(population_size=population, seed=seed)
    if strategy == "tpe":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, n_trials))
    return XGBoostSampler(space, encoder, objective, cost_fn=cost_fn, accuracy_ref=accuracy_ref,
                          transfer=transfer, seed=seed)
