"""No configuration evaluated twice in one study (resume, several workers with one seed), and a
budgeted study spends its trials on configurations within the budget."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from test_tune_workers import (
    KILL_HEARTBEAT,
    WAIT,
    WORKER,
    Lines,
    _check_budget,
    _spawn,
    _two_workers,
)

from bitsmith import prepare
from bitsmith.cost import estimate
from bitsmith.models import cifar_resnet
from bitsmith.policy import Policy, QSpec
from bitsmith.tune import Objective, TuneConfig, TuneSpace, run_study
from bitsmith.tune.distinct import DistinctSampler
from bitsmith.tune.evaluator import Measurement
from bitsmith.tune.feasible import BudgetRepair
from bitsmith.tune.space import config_key
from bitsmith.tune.workers import register_worker, worker_seed

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TableEvaluator:
    """A cheap evaluator on the real ResNet-20 layer table: exact costs (the cost model on the
    real table), synthetic accuracy (a drop growing as weights lose bits). Counts evaluations."""

    measures_latency = False

    def __init__(self, space: TuneSpace) -> None:
        _, self.table, _ = prepare(cifar_resnet(20).eval(), torch.zeros(1, 3, 32, 32))
        self.space, self.layer_names = space, self.table.names
        self.fp32_accuracy = 91.5
        self.evaluated: list[dict[str, Any]] = []

    def policy(self, config: dict[str, Any]) -> Policy:
        return self.space.to_policy(config, self.layer_names)

    def cost(self, config: dict[str, Any]):
        return estimate(self.table, self.policy(config))

    def evaluate(self, config: dict[str, Any], on_stage: Any = None) -> Measurement:
        self.evaluated.append(dict(config))
        c = self.cost(config)
        drop = sum(0.3 * 4.0 ** (3 - s.weight.bits) for s in self.policy(config).values()
                   if s.weight is not None)
        return Measurement(accuracy=91.5 - drop, fp32_accuracy=91.5, drop=drop, images=1000,
                           size_bytes=c.size_bytes, fp32_bytes=c.fp32_bytes,
                           compression=c.compression, bitops=c.bitops,
                           fp32_bitops=c.fp32_bitops, avg_weight_bits=c.avg_weight_bits)


def _size_at(ev: TableEvaluator, bits: int) -> int:
    weight = QSpec("uniform_symmetric", bits, "channel")
    return estimate(ev.table, Policy.uniform(ev.layer_names, weight,
                                             QSpec("uniform_asymmetric", 8))).size_bytes


def _finished_configs(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [config_key(t.params) for t in trials if t.state in FINISHED]


def _evaluations(outputs: list[str]) -> Counter:
    """How often each configuration was evaluated, from the workers' ``EVAL`` lines."""
    return Counter(line.split(" ", 2)[2].strip() for out in outputs
                   for line in out.splitlines() if line.startswith("EVAL "))


# ------------------------------------------------------------------ unit level
def test_worker_seeds_differ_and_worker_zero_keeps_the_seed() -> None:
    seeds = [worker_seed(7, w) for w in range(50)]
    assert seeds[0] == 7 and len(set(seeds)) == 50
    assert worker_seed(None, 3) is None and worker_seed(7, 3) == worker_seed(7, 3)


def test_workers_get_distinct_numbers_on_one_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="w", storage=url)
    again = optuna.load_study(study_name="w", storage=url)
    got = [register_worker(study, study._storage), register_worker(again, again._storage),
           register_worker(study, study._storage)]
    assert got == [0, 1, 2]
    memory = optuna.create_study()
    assert [register_worker(memory, memory._storage) for _ in range(2)] == [0, 1]


class _Constant(optuna.samplers.BaseSampler):
    """A strategy that proposes the same point forever (a replaying seeded sampler)."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[0]


def test_distinct_sampler_never_repeats_a_configuration() -> None:
    dims = {"a": (1, 2, 3), "b": ("x", "y"), "c": (True,)}
    study = optuna.create_study(sampler=DistinctSampler(_Constant(), dims, seed=0))

    def objective(trial: optuna.Trial) -> float:
        return sum(hash(trial.suggest_categorical(n, list(c))) % 7 for n, c in dims.items())

    study.optimize(objective, n_trials=6)
    keys = [config_key(t.params) for t in study.trials]
    assert len(set(keys)) == 6          # the whole space, each point once
    fixed = study.trials[0].params
    study.enqueue_trial(fixed)          # an enqueued configuration is run as given
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].params == fixed
    assert CategoricalDistribution([1, 2, 3]) == study.trials[0].distributions["a"]


def test_a_waiting_retry_ticket_holds_its_configuration() -> None:
    # a killed trial's retry ticket (WAITING, its configuration enqueued) is popped after
    # lower-numbered tickets: their fresh draws must not take that configuration
    dims = {"a": (1, 2), "b": ("x",)}
    study = optuna.create_study(sampler=DistinctSampler(_Constant(), dims, seed=0))
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))   # a plain ticket
    study.enqueue_trial({"a": 1, "b": "x"})     # the retry ticket of a killed trial
    plain = study.ask()                          # pops the plain ticket: a fresh draw
    assert plain.number == 0
    assert plain.suggest_categorical("a", [1, 2]) == 2   # not the retry's configuration
    study.tell(plain, 0.0)
    retry = study.ask()
    assert retry.suggest_categorical("a", [1, 2]) == 1   # the retry runs it as given


def test_equal_warm_starts_are_enqueued_once() -> None:
    # two equal warm starts (e.g. integer-program allocations at two budgets that coincide)
    # take one trial, not one plus a handed-back duplicate
    from optuna.storages import InMemoryStorage

    from bitsmith.tune.study import create_or_load

    warm = [{"a": 1, "b": "x"}, {"b": "x", "a": 1}, {"a": 2, "b": "x"}]
    study, budget = create_or_load(InMemoryStorage(), "s", ["maximize"], None,
                                   optuna.pruners.NopPruner(), {}, 4, warm)
    enqueued = [t.system_attrs.get("fixed_params") for t in study.trials]
    assert budget == 4 and len(study.trials) == 4
    assert enqueued[:2] == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert enqueued[2:] == [None, None]   # plain tickets for fresh draws


def test_budget_repair_moves_the_fewest_bits_into_the_budget() -> None:
    space = TuneSpace.mixed_precision()
    ev = TableEvaluator(space)
    budget = _size_at(ev, 3)
    repair = BudgetRepair(ev, Objective("max_accuracy", "size", budget=budget))
    dims = space.dimensions(ev.layer_names)
    start = {n: c[0] for n, c in dims.items()}
    start.update({n: 4 for n in dims if n.startswith("w:")})
    assert ev.cost(start).size_bytes > budget
    fixed = {f"w:{ev.layer_names[0]}": 4}
    out = repair(start, fixed)
    assert out is not None and ev.cost(out).size_bytes <= budget
    assert out[f"w:{ev.layer_names[0]}"] == 4                # an enqueued choice is kept
    assert {k: v for k, v in out.items() if ":" not in k} == \
        {k: v for k, v in start.items() if ":" not in k}     # global knobs untouched
    bits = [2, 3, 4, 5, 6, 8, "float"]

    def steps(config: dict[str, Any]) -> int:
        return sum(abs(bits.index(config[n]) - bits.index(start[n])) for n in dims if ":" in n)

    assert all(bits.index(out[n]) <= bits.index(start[n]) for n in dims if ":" in n)
    greedy = dict(start)                # a feasible alternative: the biggest layers first
    for info in sorted(ev.table, key=lambda i: -i.weight_params)[1:]:
        for b in (3, 2):
            if ev.cost(greedy).size_bytes > budget and f"w:{info.name}" not in fixed:
                greedy[f"w:{info.name}"] = b
    assert ev.cost(greedy).size_bytes <= budget and steps(out) <= steps(greedy)
    cheap = {**start, **{n: 2 for n in dims if n.startswith("w:")}}
    assert repair(cheap) == cheap                              # already within budget
    tiny = BudgetRepair(ev, Objective("max_accuracy", "size", budget=_size_at(ev, 2) // 2))
    assert tiny(start) is None                                 # nothing fits: left alone


def test_budgeted_study_on_resnet20_evaluates_feasible_configurations() -> None:
    """30 trials under a 3-bit size budget on ResNet-20's real layer table: every evaluated
    configuration is within the budget (was 4 of 30 before the repair) and distinct."""
    space = TuneSpace.mixed_precision()
    ev = TableEvaluator(space)
    budget = _size_at(ev, 3)
    result = run_study(ev, TuneConfig(objective="max_accuracy", budget=budget,
                                      strategy="random", n_trials=30, seed=0, progress=False))
    feasible = [c for c in ev.evaluated if ev.cost(c).size_bytes <= budget]
    assert len(ev.evaluated) == 30 and len(feasible) >= 25
    assert len({config_key(c) for c in ev.evaluated}) == len(ev.evaluated)
    assert result.best is not None and result.best.measurement["size_bytes"] <= budget


def test_resumed_seeded_study_does_not_replay_its_suggestions(tmp_path: Path) -> None:
    # 32 configurations for 16 trials: a replayed or colliding suggestion is likely
    space = TuneSpace.from_dict({"preset": "mixed", "per_layer_weight_bits": False,
                                   "weight_bits": [2, 3, 4, 8], "granularity": ["tensor",
                                                                             "channel"],
                                   "act_clip": ["minmax", "entropy", "percentile", "mse"],
                                   "weight_clip": ["minmax"]})
    ev = TableEvaluator(space)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = dict(tolerance=1.0, strategy="random", storage=url, study_name="s", seed=0,
                  progress=False)
    run_study(ev, TuneConfig(n_trials=8, **kwargs))
    run_study(ev, TuneConfig(n_trials=16, **kwargs))  # the same seed again, budget topped up
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    keys = _finished_configs(trials)
    assert len(keys) == 16 and len(set(keys)) == 16
    assert len(ev.evaluated) == 16     # each configuration evaluated once


# ------------------------------------------------------------- several processes
def _same_seed_workers(tmp_path: Path, url: str, study: str) -> None:
    trials, outs = _two_workers(tmp_path, url, study, n=12, delay=0.2, seed=0)
    keys = _finished_configs(trials)
    assert len(set(keys)) == len(keys) == 12          # the full budget, all distinct
    evaluations = _evaluations(outs)
    assert max(evaluations.values()) == 1 and sum(evaluations.values()) == 12


def test_two_workers_with_one_seed_sqlite_evaluate_distinct_configs(tmp_path: Path) -> None:
    _same_seed_workers(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", "same-seed")


@pytest.mark.skipif(not os.environ.get("BITSMITH_TEST_POSTGRES_URL"),
                    reason="set BITSMITH_TEST_POSTGRES_URL to a PostgreSQL server")
def test_two_workers_with_one_seed_postgres_evaluate_distinct_configs(tmp_path: Path) -> None:
    url = os.environ["BITSMITH_TEST_POSTGRES_URL"]
    study = f"same-seed-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        _same_seed_workers(tmp_path, url, study)
    finally:
        optuna.delete_study(study_name=study, storage=url)


def test_sigkill_then_resume_with_the_same_seed_repeats_nothing(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = _spawn(script, url, "kill", 8, 0.0, hang_after=3, heartbeat=KILL_HEARTBEAT,
                   seed=0)
    lines = Lines(first)
    reached = lines.wait_for("EVAL 3")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert reached, f"the worker never started its fourth evaluation: {lines.lines}"
    again = _spawn(script, url, "kill", 8, 0.0, heartbeat=KILL_HEARTBEAT, seed=0)
    output = again.communicate(timeout=WAIT)[0]
    assert again.returncode == 0, output
    trials = _check_budget(url, "kill", 8)
    keys = _finished_configs(trials)
    assert len(set(keys)) == len(keys) == 8
    killed = json.loads(lines.lines[-1].split(" ", 2)[2])   # hung in there when killed
    evaluations = _evaluations(["".join(lines.lines), output])
    evaluations[json.dumps(killed, sort_keys=True)] -= 1    # never finished the first time
    assert max(evaluations.values()) == 1 and sum(evaluations.values()) == 8
