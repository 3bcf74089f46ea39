"""``run_study()``: run (or join, or resume) a post-training quantization study.

One call is one *worker*: it creates the study (or loads it), pops trial
tickets until the study's budget is used up or its own ``timeout`` passes,
saves the best configuration after every trial, and at the end writes the
outputs (:mod:`bitsmith.tune.outputs`). Run it N times against one storage URL
and study name — on one machine or many — and the N workers share the budget.
The producer contract on top is :func:`bitsmith.tune.tune` (:mod:`bitsmith.tune.api`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from bitsmith.cost.budget import InfeasibleBudgetError
from bitsmith.tune.config import TuneConfig
from bitsmith.tune.distinct import (
    DistinctSampler,
    DuplicateConfig,
    exhausted,
    find_twin,
    release_duplicate,
)
from bitsmith.tune.errors import TuneError
from bitsmith.tune.evaluator import Evaluator, Measurement, as_mapping
from bitsmith.tune.feasible import BudgetRepair
from bitsmith.tune.features import ConfigEncoder
from bitsmith.tune.objectives import Objective, cost_value, fp32_cost
from bitsmith.tune.progress import TuneProgress
from bitsmith.tune.results import MEASUREMENT_ATTR, TuneResult, summarize
from bitsmith.tune.samplers import DROP_ATTR, make_sampler
from bitsmith.tune.space import Choices, config_key
from bitsmith.tune.study import (
    FINISHED,
    Heartbeat,
    count_states,
    create_or_load,
    open_storage,
    pop_ticket,
    reclaim_stale,
)
from bitsmith.tune.transfer import load_transfer
from bitsmith.tune.workers import register_worker, worker_seed

DEFAULT_STUDY = "bitsmith-tune"
BUDGET_KIND = {"size": "size_bytes", "bitops": "bitops", "latency": "latency"}


def _pruner(objective: Objective, margin: float, prune: bool) -> optuna.pruners.BasePruner:
    """Stops hopeless configurations after the first evaluation stage.

    ``min_cost``: the intermediate value is the drop on the images seen so far;
    a configuration more than ``margin`` points beyond the tolerance is pruned
    (:class:`optuna.pruners.ThresholdPruner`). ``max_accuracy``: the
    intermediate value is the accuracy; :class:`optuna.pruners.MedianPruner`.
    Pareto studies are not pruned (Optuna pruners are single-objective).
    """
    if not prune or objective.kind == "pareto":
        return optuna.pruners.NopPruner()
    if objective.kind == "min_cost":
        return optuna.pruners.ThresholdPruner(upper=objective.max_drop + margin)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def cheapest(evaluator: Evaluator, objective: Objective) -> tuple[Choices, Measurement]:
    """The configuration of lowest cost in the space (exact; per-layer knobs at their
    cheapest choice, every combination of the global knobs tried)."""
    space, names = evaluator.space, evaluator.layer_names
    dims = space.dimensions(names)
    best: tuple[float, Choices, Measurement] | None = None
    per_layer = {n: c for n, c in dims.items() if ":" in n}
    global_space = {n: c for n, c in dims.items() if ":" not in n}
    probe = {n: c[0] for n, c in dims.items()}
    for name, choices in per_layer.items():
        costs = []
        for c in choices:
            cfg = {**probe, name: c}
            costs.append((cost_value(evaluator_cost(evaluator, cfg), objective.metric), c))
        probe[name] = min(costs, key=lambda x: x[0])[1]
    for combo in itertools.product(*global_space.values()):
        cfg = {**probe, **dict(zip(global_space, combo))}
        m = evaluator_cost(evaluator, cfg)
        c = cost_value(m, objective.metric)
        if best is None or c < best[0]:
            best = (c, cfg, m)
    assert best is not None
    return best[1], best[2]


def evaluator_cost(evaluator: Evaluator, config: Choices) -> Measurement:
    """A cost-only measurement (accuracy NaN) of ``config``."""
    cost = evaluator.cost(config)
    return Measurement(accuracy=math.nan, fp32_accuracy=math.nan, drop=math.nan, images=0,
                       size_bytes=cost.size_bytes, fp32_bytes=cost.fp32_bytes,
                       compression=cost.compression, bitops=cost.bitops,
                       fp32_bitops=cost.fp32_bitops, avg_weight_bits=cost.avg_weight_bits)


class _TrialRunner:
    """Runs one trial: suggest a configuration, reuse or evaluate it, record it."""

    def __init__(self, study: optuna.Study, evaluator: Evaluator, objective: Objective) -> None:
        self.study = study
        self.evaluator = evaluator
        self.objective = objective
        self.dims = evaluator.space.dimensions(evaluator.layer_names)

    def _previous(self, config: Choices, number: int) -> Mapping[str, Any] | None:
        """Measurement of an identical configuration already completed in the study (any
        worker, any earlier run): the study itself is the cross-process result cache."""
        key = config_key(config)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != number and MEASUREMENT_ATTR in t.user_attrs and \
                    config_key(t.params) == key:
                return t.user_attrs[MEASUREMENT_ATTR]
        return None

    def __call__(self, trial: Trial) -> float | tuple[float, float]:
        config = {n: trial.suggest_categorical(n, list(c)) for n, c in self.dims.items()}
        twin = find_twin(self.study, trial.number, config)
        if twin is not None and not exhausted(self.study, self.dims):
            raise DuplicateConfig(twin)          # handed back: re-drawn, not counted
        prev = self._previous(config, trial.number)
        if prev is not None:
            m = dataclasses.replace(Measurement.from_dict(prev), cached=True, seconds=0.0)
        else:
            m = evaluator_cost(self.evaluator, config)
            if self.objective.needs_accuracy(m):
                m = self.evaluator.evaluate(config, on_stage=self._stage_callback(trial))
        trial.set_user_attr(MEASUREMENT_ATTR, dict(as_mapping(m)))
        if not math.isnan(m.drop):
            trial.set_user_attr(DROP_ATTR, float(m.drop))
        if m.pruned:
            raise optuna.TrialPruned(f"drop {m.drop:.2f} points after {m.images} images")
        violation = self.objective.violation(m)
        if not math.isnan(violation) and self.objective.kind != "pareto":
            trial.set_constraint("constraint", violation)
        return self.objective.values(m)

    def _stage_callback(self, trial: Trial) -> Callable[[int, int, float, float], bool] | None:
        if self.objective.kind == "pareto":
            return None

        def on_stage(step: int, images: int, acc: float, fp32: float) -> bool:
            value = fp32 - acc if self.objective.kind == "min_cost" else acc
            trial.report(value, step)
            return trial.should_prune()
        return on_stage


def _save_best(result: TuneResult, evaluator: Evaluator, out_dir: Path | None) -> None:
    if out_dir is None:
        return
    from bitsmith.tune.outputs import write_best

    write_best(result, evaluator, out_dir)


def run_study(evaluator: Evaluator, config: TuneConfig, *, out_dir: str | Path | None = None,
              run_meta: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None,
              initial_configs: Sequence[Mapping[str, Any]] = ()) -> TuneResult:
    """Search the configurations of ``evaluator.space`` for ``config``'s objective; one worker.

    One call is one *worker*: it creates the study (or loads it), pops trial tickets until
    the study's budget is used up or its own ``config.timeout`` passes, saves the best
    configuration after every trial, and at the end writes the outputs
    (:mod:`bitsmith.tune.outputs`) into ``out_dir``. Run it N times against one storage
    URL and study name - on one machine or many - and the N workers share the budget.

    Args:
        evaluator: measures configurations (e.g. :class:`TorchEvaluator`).
        config: the :class:`TuneConfig` (objective, strategy, trials, storage, ...).
        out_dir: the run directory (``None``: write nothing; the study stays in memory
            unless ``config.storage`` is given).
        run_meta: labels for the run directory (``model``, ``dataset``, ``eval_set``; other
            keys go to ``run.json`` notes).
        log: receives one line per event (study opened, failed trial).
        initial_configs: configurations enqueued first (``config.init_policies`` too).

    Raises:
        TuneError: bad input (empty space, storage cannot be opened, ...).
        InfeasibleBudgetError: a budget no configuration of the space can meet.
    """
    say = log or (lambda s: None)
    objective = config.make_objective()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    url = config.storage or (f"sqlite:///{(out / 'study.db').resolve()}" if out is not None
                             else None)
    store = open_storage(url, config.heartbeat_interval)
    space, names = evaluator.space, evaluator.layer_names
    if space.size(names) < 1:
        raise TuneError("the search space is empty")
    if objective.metric == "latency" and not evaluator.measures_latency:
        raise TuneError("metric 'latency' needs an evaluator that measures latency on a runtime")
    _check_feasible(evaluator, objective)
    fp32_acc = float(getattr(evaluator, "fp32_accuracy", 100.0))
    initial = [dict(c) for c in initial_configs]
    initial += [space.config_from_policy(p, names) for p in config.warm_starts()]
    spec = {"space": space.fingerprint(), "objective": objective.to_dict(), "layers": names}
    study, budget = create_or_load(store, config.study_name or DEFAULT_STUDY,
                                   objective.directions, None,
                                   _pruner(objective, config.prune_margin, config.prune), spec,
                                   config.n_trials, [c for c in initial if c])
    worker_id = register_worker(study, store)          # seeds differ per worker (workers.py)
    study.sampler = DistinctSampler(
        _sampler(evaluator, objective, config, fp32_acc, worker_seed(config.seed, worker_id)),
        space.dimensions(names), seed=config.seed, worker=worker_id,
        repair=BudgetRepair.for_study(evaluator, objective))
    say(f"study {study.study_name!r} on {url or 'memory'}: {objective.describe()}, "
        f"budget {budget} trials, strategy {config.strategy}, space of "
        f"{space.size(names):.3g} configs, worker {worker_id}")
    run_log = None
    if out is not None:
        from bitsmith.tune.outputs import RunLog

        if RunLog.supported(evaluator):
            run_log = RunLog(out, evaluator, objective, config.strategy, fp32_acc, run_meta)
    worker = _Worker(study, store, _TrialRunner(study, evaluator, objective), objective, budget,
                     config, evaluator, out, url, fp32_acc, say, run_log)
    result = summarize(study, objective, budget, worker.work(), url, fp32_acc)
    if out is not None:
        from bitsmith.tune.outputs import write_outputs

        result.files = write_outputs(result, evaluator, out, save_model=config.save_model,
                                     run_log=run_log)
    return result


def _check_feasible(evaluator: Evaluator, objective: Objective) -> None:
    """Raise :class:`InfeasibleBudgetError` when even the cheapest configuration is over a
    ``max_accuracy`` budget (certain before any evaluation)."""
    if objective.kind != "max_accuracy" or objective.metric == "latency":
        return
    cfg, m = cheapest(evaluator, objective)
    if cost_value(m, objective.metric) > objective.max_cost:
        raise InfeasibleBudgetError(
            BUDGET_KIND[objective.metric], objective.max_cost,
            cost_value(m, objective.metric), " of the search space",
            hint=f"raise the budget or add cheaper choices; closest configuration: {cfg}",
            closest=cfg, measurement=m)


def _sampler(evaluator: Evaluator, objective: Objective, config: TuneConfig,
             fp32_acc: float, seed: int | None) -> optuna.samplers.BaseSampler:
    space, names = evaluator.space, evaluator.layer_names
    encoder = ConfigEncoder(space, names, getattr(evaluator, "weight_params", {}),
                            getattr(evaluator, "descriptors", {}))

    def cost_fn(choices: Choices) -> tuple[float, float]:
        m = evaluator_cost(evaluator, choices)
        return cost_value(m, objective.metric), fp32_cost(m, objective.metric)

    transfer = [r for path in config.transfer for r in load_transfer(path)]
    return make_sampler(config.strategy, space, encoder, objective, seed=seed,
                        cost_fn=None if objective.metric == "latency" else cost_fn,
                        accuracy_ref=fp32_acc, transfer=transfer, n_trials=config.n_trials)


@dataclass
class _Worker:
    """The worker loop of :func:`run_study` and what it shares between trials."""

    study: optuna.Study
    store: Any
    run: _TrialRunner
    objective: Objective
    budget: int
    config: TuneConfig
    evaluator: Evaluator
    out: Path | None
    url: str | None
    fp32_acc: float
    say: Callable[[str], None]
    run_log: Any = None

    def work(self) -> str:
        """Pop tickets until none is left (or the timeout), then wait for the other workers'
        running trials (re-running dead ones). Returns why it stopped."""
        t0 = time.monotonic()
        cfg = self.config
        with TuneProgress(self.budget, enabled=cfg.progress) as bar:
            while True:
                reclaim_stale(self.study)
                counts = count_states(self.study)
                bar.update(sum(counts[s] for s in FINISHED) + counts[TrialState.FAIL],
                           _best_line(self.study, self.objective, self.budget, self.url,
                                      self.fp32_acc))
                if cfg.timeout is not None and time.monotonic() - t0 > cfg.timeout:
                    return "timeout"
                trial_id = pop_ticket(self.study, self.store)
                if trial_id is None:
                    if counts[TrialState.RUNNING] == 0 and counts[TrialState.WAITING] == 0:
                        return "budget"
                    time.sleep(min(1.0, cfg.heartbeat_interval))   # others still running
                    continue
                number = _run_one(self.study, self.store, trial_id, self.run,
                                  cfg.heartbeat_interval, self.say)
                self._record(number)

    def _record(self, number: int) -> None:
        """Save the best so far and append the finished trial to the run directory."""
        if self.out is None:
            return
        current = summarize(self.study, self.objective, self.budget, "running", self.url,
                            self.fp32_acc)
        _save_best(current, self.evaluator, self.out)
        if self.run_log is not None:
            record = next((t for t in current.trials if t.number == number), None)
            if record is not None:
                self.run_log.append(record, current.best)


def _run_one(study: optuna.Study, store: Any, trial_id: int, run: _TrialRunner,
             heartbeat_interval: int, say: Callable[[str], None]) -> int:
    """Run one claimed trial to a final state; returns its number."""
    trial = Trial(study, trial_id)
    beat = Heartbeat(store, trial_id, heartbeat_interval)
    try:
        values = run(trial)
    except DuplicateConfig as dup:
        beat.stop()
        release_duplicate(study, trial, dup.twin)
        return trial.number
    except optuna.TrialPruned:
        beat.stop()
        study.tell(trial, state=TrialState.PRUNED)
        return trial.number
    except KeyboardInterrupt:
        beat.stop()
        # give the ticket back: fail this trial and re-enqueue its configuration
        frozen = study.tell(trial, state=TrialState.FAIL)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            system_attrs={"failed_trial": frozen.number}))
        raise
    except TuneError:
        beat.stop()
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as err:  # one broken configuration must not end the study
        beat.stop()
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        study.tell(trial, state=TrialState.FAIL)
        say(f"trial {trial.number} failed: {type(err).__name__}: {err}")
        return trial.number
    beat.stop()
    study.tell(trial, values)
    return trial.number


def _best_line(study: optuna.Study, objective: Objective, budget: int, url: str | None,
               fp32_acc: float) -> str:
    result = summarize(study, objective, budget, "running", url, fp32_acc)
    pick = result.best
    if pick is None:
        return "no feasible configuration yet"
    m = pick.measurement
    return (f"best: {m['accuracy']:.2f}% (drop {m['drop']:.2f}), "
            f"{m['compression']:.2f}x, {m['avg_weight_bits']:.2f} bits")
