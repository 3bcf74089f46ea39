"""No configuration evaluated twice in one study: fingerprints, a de-duplicating sampler, and
the hand-back of a trial that drew a configuration another trial already holds.

Two layers, both keyed by :func:`~bitsmith.tune.space.config_key` (the canonical JSON of a
configuration):

* **Prevention** — :class:`DistinctSampler` wraps any strategy's sampler. It draws a whole
  configuration up front (the strategy's relative and independent suggestions), optionally
  repairs it into the budget (:class:`~bitsmith.tune.feasible.BudgetRepair`), and re-draws
  while the result is *taken*: held by a running, completed or pruned trial, or by a trial
  whose evaluation failed. After ``max_draws`` strategy draws it falls back to uniformly
  random configurations of its own (seeded from ``(seed, worker, trial number)``), so a
  strategy that keeps proposing the same point (a resumed seeded sampler, a grid cell two
  workers picked at once) cannot waste the budget.
* **Detection** — two workers can still draw the same configuration at the same moment.
  After its parameters are stored, a trial checks :func:`find_twin`; a trial that finds
  another one holding its configuration raises :class:`DuplicateConfig` and is handed back
  by :func:`release_duplicate`: closed as FAIL with the user attribute
  ``bitsmith.duplicate_of`` (reported as state ``DUPLICATE``) and replaced by a fresh ticket,
  so it does not count against the study's budget. (Both trials of a simultaneous pair may
  yield; then neither evaluates it and both tickets are re-drawn — never a double
  evaluation.)

Only when every configuration of the space is taken is a repeat allowed: the runner then
reuses the stored measurement (``cached``), which also bounds the hand-backs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from bitsmith.tune.space import Choices, config_key

DUPLICATE_ATTR = "bitsmith.duplicate_of"
ERROR_ATTR = "error"
HOLDING = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)

# repair(config, fixed) -> a configuration within the budget, or None when none is near
Repair = Callable[[Choices, Mapping[str, Any]], Choices | None]


class DuplicateConfig(Exception):
    """This trial's configuration is held by trial ``twin`` (raised by the trial runner)."""

    def __init__(self, twin: int) -> None:
        super().__init__(f"configuration already held by trial {twin}")
        self.twin = twin


def fingerprint(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical configuration (equal configurations, equal prints)."""
    return hashlib.sha256(config_key(config).encode()).hexdigest()[:16]


def _held(t: FrozenTrial, names: Sequence[str]) -> Mapping[str, Any] | None:
    """The configuration ``t`` holds, or ``None``: complete parameters, and running, finished,
    failed in its own evaluation, or waiting with the whole configuration enqueued (a warm
    start, or the retry ticket of a killed trial: without it a fresh draw could take the
    killed trial's configuration between the kill and the retry); a handed-back duplicate
    and a killed trial (its retry ticket holds the configuration) hold nothing."""
    params: Mapping[str, Any] = t.params
    if t.state == TrialState.WAITING:
        params = t.system_attrs.get("fixed_params") or {}
    if not params or any(n not in params for n in names):
        return None
    if t.state in HOLDING or t.state == TrialState.WAITING:
        return params
    return params if t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs else None


def taken(study: Study, names: Sequence[str], exclude: int | None = None) -> dict[str, int]:
    """``config_key -> trial number`` of every configuration held in ``study`` (the lowest
    number when several trials hold one), except by trial ``exclude``."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        params = _held(t, names) if t.number != exclude else None
        if params is not None:
            out.setdefault(config_key(params), t.number)
    return out


def find_twin(study: Study, number: int, config: Mapping[str, Any]) -> int | None:
    """Number of another trial holding ``config`` (``None`` if it is this trial's alone)."""
    return taken(study, list(config), exclude=number).get(config_key(config))


def release_duplicate(study: Study, trial: optuna.trial.Trial, twin: int) -> None:
    """Hand a duplicate trial back: FAIL with ``bitsmith.duplicate_of``, plus a new ticket
    (a WAITING trial without parameters), so the study's budget is spent on distinct ones."""
    trial.set_user_attr(DUPLICATE_ATTR, int(twin))
    study.tell(trial, state=TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))


def is_duplicate(t: FrozenTrial) -> bool:
    """Whether ``t`` was handed back as a duplicate (it evaluated nothing)."""
    return t.state == TrialState.FAIL and DUPLICATE_ATTR in t.user_attrs


def exhausted(study: Study, dims: Mapping[str, Sequence[Any]]) -> bool:
    """Whether every configuration of the space is already held."""
    size = 1
    for choices in dims.values():
        size *= len(choices)
        if size > 10**9:
            return False
    return len(taken(study, list(dims))) >= size


class DistinctSampler(BaseSampler):
    """Wraps a strategy's sampler so that each trial gets an untaken configuration.

    Args:
        base: the strategy's sampler (random, grid, NSGA-II, TPE, XGBoost).
        dims: parameter name -> choices (:meth:`TuneSpace.dimensions`).
        seed, worker: seed of the fallback draws (with the trial number); ``seed=None``
            draws from fresh entropy.
        repair: maps a drawn configuration into the budget (or ``None`` to leave it).
        max_draws: strategy draws before the uniform fallback.
    """

    def __init__(self, base: BaseSampler, dims: Mapping[str, Sequence[Any]], *,
                 seed: int | None = None, worker: int = 0, repair: Repair | None = None,
                 max_draws: int = 8, max_fallback: int = 200) -> None:
        self.base = base
        self.dims = {n: tuple(c) for n, c in dims.items()}
        self.distributions = {n: CategoricalDistribution(list(c)) for n, c in self.dims.items()}
        self.seed = seed
        self.worker = int(worker)
        self.repair = repair
        self.max_draws = int(max_draws)
        self.max_fallback = int(max_fallback)

    # ------------------------------------------------------------- optuna API
    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {n: d for n, d in self.distributions.items() if len(d.choices) > 1}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        fixed = dict(trial.system_attrs.get("fixed_params", {}) or {})
        if all(n in fixed for n in search_space):
            return {}                       # an enqueued configuration: run it as given
        held = taken(study, list(self.dims), exclude=trial.number)
        latest = study._storage.get_trial(trial._trial_id)   # sees a grid cell set just now
        config: Choices | None = None
        for _ in range(self.max_draws):
            config = self._finish(self._draw(study, latest), fixed)
            if config_key(config) not in held:
                return self._free(config, fixed, search_space)
        rng = self._rng(trial.number)
        for _ in range(self.max_fallback):
            config = self._finish(self._uniform(rng), fixed)
            if config_key(config) not in held:
                return self._free(config, fixed, search_space)
        return self._free(config or {}, fixed, search_space)   # the space is (nearly) full

    # -------------------------------------------------------------- internals
    def _draw(self, study: Study, trial: FrozenTrial) -> Choices:
        """One whole configuration as the wrapped strategy would suggest it."""
        space = self.base.infer_relative_search_space(study, trial)
        config = dict(self.base.sample_relative(study, trial, space)) if space else {}
        for name, dist in self.distributions.items():
            if name in config:
                continue
            if len(dist.choices) == 1:
                config[name] = dist.choices[0]
            else:
                config[name] = self.base.sample_independent(study, trial, name, dist)
        return config

    def _uniform(self, rng: np.random.Generator) -> Choices:
        return {n: c[int(rng.integers(len(c)))] for n, c in self.dims.items()}

    def _finish(self, config: Choices, fixed: Mapping[str, Any]) -> Choices:
        config = {**config, **{k: v for k, v in fixed.items() if k in self.dims}}
        if self.repair is not None:
            repaired = self.repair(config, fixed)
            if repaired is not None:
                return repaired
        return config

    def _rng(self, number: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, self.worker, int(number)])

    @staticmethod
    def _free(config: Choices, fixed: Mapping[str, Any],
              search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k in search_space and k not in fixed}
