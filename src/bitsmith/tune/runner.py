"""``tune()``: run (or join, or resume) a post-training quantization study.

One call is one *worker*: it creates the study (or loads it), pops trial
tickets until the study's budget is used up or its own ``timeout`` passes,
saves the best configuration after every trial, and at the end writes the
outputs (:mod:`bitsmith.tune.outputs`). Run it N times against one storage URL
and study name — on one machine or many — and the N workers share the budget.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from bitsmith.cost.budget import InfeasibleBudgetError
from bitsmith.policy import Policy
from bitsmith.tune.errors import TuneError
from bitsmith.tune.evaluator import Evaluator, Measurement, TorchEvaluator, as_mapping
from bitsmith.tune.features import ConfigEncoder
from bitsmith.tune.objectives import Objective, cost_value, fp32_cost
from bitsmith.tune.progress import TuneProgress
from bitsmith.tune.results import MEASUREMENT_ATTR, TuneResult, summarize
from bitsmith.tune.samplers import DROP_ATTR, TransferRecord, make_sampler
from bitsmith.tune.space import Choices, TuneSpace, config_key
from bitsmith.tune.study import (
    FINISHED,
    Heartbeat,
    count_states,
    create_or_load,
    open_storage,
    pop_ticket,
    reclaim_stale,
)

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
        return optuna.pruners.ThresholdPruner(upper=float(objective.tolerance) + margin)
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
        prev = self._previous(config, trial.number)
        if prev is not None:
            m = Measurement(**{k: (math.nan if v is None else v) for k, v in prev.items()})
            m = Measurement(**{**m.to_dict(), "cached": True, "seconds": 0.0})
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


def tune(model: Any = None, calibration: Any = None, validation: Any = None, *,
         space: TuneSpace | None = None, objective: Objective | None = None,
         strategy: str = "xgboost", n_trials: int = 100, timeout: float | None = None,
         storage: str | None = None, study_name: str | None = None,
         out_dir: str | Path | None = None, seed: int | None = 0,
         transfer: Sequence[TransferRecord] = (),
         initial_configs: Sequence[Mapping[str, Any]] = (),
         initial_policies: Sequence[Policy] = (), stages: Sequence[float | int] = (0.25, 1.0),
         prune: bool = True, prune_margin: float = 2.0, evaluator: Evaluator | None = None,
         progress: bool = True, save_model: bool = True, heartbeat_interval: int = 5,
         log: Callable[[str], None] | None = None,
         run_meta: Mapping[str, Any] | None = None) -> TuneResult:
    """Search quantization configurations of ``model`` for ``objective``; one worker.

    Args:
        model: the trained float ``nn.Module``.
        calibration: unlabeled calibration inputs (tensor ``(N, ...)`` or dataset).
        validation: labeled validation data, ``(inputs, labels)`` or a dataset;
            never the test set.
        space: the search space (default :meth:`TuneSpace.mixed_precision`).
        objective: default ``min_cost`` of size with a 1-point tolerance.
        strategy: ``random``, ``grid``, ``genetic``, ``tpe`` or ``xgboost``.
        n_trials: the *study's* trial budget (finished trials, all workers together).
        timeout: seconds after which this worker starts no new trial.
        storage: SQLAlchemy URL; default ``sqlite:///<out_dir>/study.db`` (in memory
            without ``out_dir``).
        study_name: shared by all workers of one study.
        out_dir: where the best policy, model, trial log and plot are written.
        seed: sampler seed (``None``: random).
        transfer: measurements of other models for the XGBoost cost model.
        initial_configs / initial_policies: warm starts enqueued first (e.g. from a
            sensitivity-based bit allocator); policies are mapped to per-layer bits.
        stages: validation stages for early stopping (fractions or image counts).
        prune, prune_margin: stop configurations more than ``prune_margin`` points
            beyond the tolerance after the first stage.
        evaluator: a ready evaluator (overrides model/calibration/validation/stages).
        progress: show rich progress bars.
        save_model: write the quantized model (safetensors) of the best configuration.
        heartbeat_interval: seconds between heartbeats; a trial silent for 3x this is
            considered dead and re-run.
        run_meta: labels for the run directory (``model``, ``dataset``, ``eval_set``; other
            keys go to ``run.json`` notes); ``out_dir`` is a ``bitsmith.run/1`` directory
            (``bitsmith report OUT_DIR``) whenever the evaluator has a layer table.

    Raises:
        TuneError: bad input (tolerance < 0, empty space, storage cannot be opened, ...).
        InfeasibleBudgetError: a budget no configuration of the space can meet (``.closest``
            is the cheapest configuration, ``.measurement`` its cost).
    """
    say = log or (lambda s: None)
    objective = objective or Objective()
    if n_trials is None or int(n_trials) < 1:
        raise TuneError(f"n_trials must be >= 1, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise TuneError(f"timeout must be > 0 seconds, got {timeout}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    url = storage or (f"sqlite:///{(out / 'study.db').resolve()}" if out is not None else None)
    store = open_storage(url, heartbeat_interval)
    if evaluator is None:
        if model is None or calibration is None or validation is None:
            raise TuneError("tune() needs model, calibration and validation (or an evaluator)")
        evaluator = TorchEvaluator(model, calibration, validation,
                                   space or TuneSpace.mixed_precision(), stages=stages)
    space = evaluator.space
    names = evaluator.layer_names
    if space.size(names) < 1:
        raise TuneError("the search space is empty")
    if objective.metric == "latency" and not evaluator.measures_latency:
        raise TuneError("metric 'latency' needs an evaluator that measures latency on a runtime")
    if objective.kind == "max_accuracy" and objective.metric != "latency":
        cfg, m = cheapest(evaluator, objective)
        if cost_value(m, objective.metric) > float(objective.budget):
            raise InfeasibleBudgetError(
                BUDGET_KIND[objective.metric], float(objective.budget),
                cost_value(m, objective.metric), " of the search space",
                hint=f"raise the budget or add cheaper choices; closest configuration: {cfg}",
                closest=cfg, measurement=m)

    encoder = ConfigEncoder(space, names, getattr(evaluator, "weight_params", {}),
                            getattr(evaluator, "descriptors", {}))
    fp32_acc = float(getattr(evaluator, "fp32_accuracy", 100.0))

    def cost_fn(config: Choices) -> tuple[float, float]:
        m = evaluator_cost(evaluator, config)
        return cost_value(m, objective.metric), fp32_cost(m, objective.metric)

    sampler = make_sampler(strategy, space, encoder, objective, seed=seed,
                           cost_fn=None if objective.metric == "latency" else cost_fn,
                           accuracy_ref=fp32_acc, transfer=transfer, n_trials=int(n_trials))
    initial = [dict(c) for c in initial_configs]
    initial += [space.config_from_policy(p, names) for p in initial_policies]
    spec = {"space": space.fingerprint(), "objective": objective.to_dict(), "layers": names}
    study, budget = create_or_load(store, study_name or DEFAULT_STUDY, objective.directions,
                                   sampler, _pruner(objective, prune_margin, prune), spec,
                                   int(n_trials), [c for c in initial if c])
    say(f"study {study.study_name!r} on {url or 'memory'}: {objective.describe()}, "
        f"budget {budget} trials, strategy {strategy}, space of {space.size(names):.3g} configs")
    run_log = None
    if out is not None:
        from bitsmith.tune.outputs import RunLog

        if RunLog.supported(evaluator):
            run_log = RunLog(out, evaluator, objective, strategy, fp32_acc, run_meta)
    stopped = _work(study, store, _TrialRunner(study, evaluator, objective), objective, budget,
                    timeout, heartbeat_interval, progress, evaluator, out, url, fp32_acc, say,
                    run_log)
    result = summarize(study, objective, budget, stopped, url, fp32_acc)
    if out is not None:
        from bitsmith.tune.outputs import write_outputs

        result.files = write_outputs(result, evaluator, out, save_model=save_model,
                                     run_log=run_log)
    return result


def _work(study: optuna.Study, store: Any, run: _TrialRunner, objective: Objective, budget: int,
          timeout: float | None, heartbeat_interval: int, progress: bool, evaluator: Evaluator,
          out: Path | None, url: str | None, fp32_acc: float,
          say: Callable[[str], None], run_log: Any = None) -> str:
    """The worker loop: pop tickets until none is left (or the timeout), then wait for the
    other workers' running trials (re-running dead ones). Returns why it stopped."""
    t0 = time.monotonic()
    with TuneProgress(budget, enabled=progress) as bar:
        while True:
            reclaim_stale(study)
            counts = count_states(study)
            bar.update(sum(counts[s] for s in FINISHED) + counts[TrialState.FAIL], _best_line(
                study, objective, budget, url, fp32_acc))
            if timeout is not None and time.monotonic() - t0 > timeout:
                return "timeout"
            trial_id = pop_ticket(study, store)
            if trial_id is None:
                if counts[TrialState.RUNNING] == 0 and counts[TrialState.WAITING] == 0:
                    return "budget"
                time.sleep(min(1.0, heartbeat_interval))   # others still running: wait
                continue
            number = _run_one(study, store, trial_id, run, heartbeat_interval, say)
            if out is not None:
                current = summarize(study, objective, budget, "running", url, fp32_acc)
                _save_best(current, evaluator, out)
                if run_log is not None:
                    record = next((t for t in current.trials if t.number == number), None)
                    if record is not None:
                        run_log.append(record, current.best)


def _run_one(study: optuna.Study, store: Any, trial_id: int, run: _TrialRunner,
             heartbeat_interval: int, say: Callable[[str], None]) -> int:
    """Run one claimed trial to a final state; returns its number."""
    trial = Trial(study, trial_id)
    beat = Heartbeat(store, trial_id, heartbeat_interval)
    try:
        values = run(trial)
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
