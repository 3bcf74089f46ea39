"""Study persistence: storage, creation/resume, the shared trial budget, heartbeats.

* **Storage**: any SQLAlchemy URL (``sqlite:///tune.db`` by default,
  ``postgresql+psycopg2://user@host/db`` to share a study between machines),
  opened as an Optuna ``RDBStorage`` with heartbeats.
* **Budget as tickets**: the process that creates a study enqueues exactly
  ``n_trials`` WAITING trials ("tickets") and then records the budget in the
  study's user attributes. Every worker only *pops* tickets (an atomic
  WAITING -> RUNNING transition in the database), so N workers sharing a study
  finish exactly the budget: no trial is run twice and none is lost. A later run
  with a larger ``n_trials`` tops the tickets up.
* **Resume**: a worker killed mid-trial stops its heartbeat; once the grace
  period has passed, any worker fails that trial as stale and Optuna's
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues a ticket
  with the same configuration, so finished trials are kept and the killed one is
  re-run.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from bitsmith.tune.errors import StorageError, TuneError
from bitsmith.tune.space import config_key

BUDGET_ATTR = "bitsmith.budget"
SPEC_ATTR = "bitsmith.spec"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str | None, heartbeat_interval: int = 5,
                 grace_period: int | None = None) -> BaseStorage:
    """An Optuna storage for ``url`` (``None``: in memory, no resume).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the
            database cannot be reached or created.
    """
    if url is None:
        return InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise StorageError(f"storage {url!r} is not a SQLAlchemy URL (e.g. sqlite:///tune.db or "
                           "postgresql+psycopg2://user@host:5432/db)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgres"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url, engine_kwargs=engine_kwargs,
                    heartbeat_interval=int(heartbeat_interval),
                    grace_period=grace_period or 3 * int(heartbeat_interval),
                    heartbeat_stale_trial_callback=retry)
        except sqlalchemy.exc.DatabaseError as err:
            # several workers creating the schema at once: the loser retries and finds it
            # ("table ... already exists" when the other created it between check and create:
            # an OperationalError on SQLite, a ProgrammingError (DuplicateTable) on PostgreSQL)
            transient = isinstance(err, sqlalchemy.exc.IntegrityError) or any(
                text in str(err) for text in ("locked", "already exists"))
            if not transient or attempt == 5:
                return _storage_failure(url, err)
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:
            return _storage_failure(url, err)
    raise AssertionError("unreachable")  # pragma: no cover


def _storage_failure(url: str, err: Exception) -> BaseStorage:
    """Raise :class:`StorageError` naming the URL and the first line of the cause."""
    if isinstance(err, ModuleNotFoundError):
        extra = " (pip install 'bitsmith[postgres]')" if "psycopg" in str(err) else ""
        raise StorageError(f"cannot open storage {url!r}: missing driver {err.name}{extra}"
                           ) from None
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise StorageError(f"cannot open storage {url!r}: {reason}") from None


def _wait_for_budget(study: optuna.Study, timeout: float = 120.0) -> int:
    t0 = time.monotonic()
    while True:
        budget = study.user_attrs.get(BUDGET_ATTR)
        if budget is not None:
            return int(budget)
        if time.monotonic() - t0 > timeout:
            raise TuneError(f"study {study.study_name!r} exists but its creator never recorded "
                            "a trial budget; was it created outside bitsmith?")
        time.sleep(0.5)


def _add_tickets(study: optuna.Study, count: int) -> None:
    """Enqueue ``count`` WAITING trials with no fixed parameters (any sampler fills them)."""
    for _ in range(count):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))


def create_or_load(storage: BaseStorage, name: str, directions: Sequence[str],
                   sampler: optuna.samplers.BaseSampler | None,
                   pruner: optuna.pruners.BasePruner,
                   spec: Mapping[str, Any], n_trials: int,
                   initial: Sequence[Mapping[str, Any]] = ()) -> tuple[optuna.Study, int]:
    """Create the study with its tickets, or load it and check it matches; returns
    ``(study, budget)``.

    ``sampler`` may be ``None`` and set on the study afterwards (once the worker has its
    number, :mod:`bitsmith.tune.workers`). ``spec`` (search space, objective, layers) is
    stored at creation; a worker
    whose spec differs is refused, so two workers cannot silently optimise
    different problems in one study. ``initial`` configurations (warm starts)
    are enqueued first, each distinct one once, and count towards the budget.
    """
    if n_trials < 1:
        raise TuneError(f"n_trials must be >= 1, got {n_trials}")
    try:
        study = optuna.create_study(storage=storage, study_name=name,
                                    directions=[StudyDirection[d.upper()] for d in directions],
                                    sampler=sampler, pruner=pruner, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        created = False
    if created:
        study.set_user_attr(SPEC_ATTR, dict(spec))
        # equal warm starts are one trial (a repeat would only be handed back as a duplicate)
        initial = list({config_key(p): p for p in initial}.values())[:n_trials]
        for params in initial:
            study.enqueue_trial(dict(params), skip_if_exists=False)
        _add_tickets(study, n_trials - len(initial))
        study.set_user_attr(BUDGET_ATTR, n_trials)
        return study, n_trials
    budget = _wait_for_budget(study)
    found = study.user_attrs.get(SPEC_ATTR)
    if found is not None and found != dict(spec):
        diff = sorted(k for k in set(found) | set(spec) if found.get(k) != spec.get(k))
        raise TuneError(f"study {name!r} was created for a different problem (differs in "
                        f"{diff}); use another --study name")
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise TuneError(f"study {name!r} optimises {study.directions}, not {list(directions)}")
    if n_trials > budget:
        _add_tickets(study, n_trials - budget)
        study.set_user_attr(BUDGET_ATTR, n_trials)
        budget = n_trials
    return study, budget


def _claim_rdb(storage: RDBStorage, trial_id: int) -> bool:
    """WAITING -> RUNNING as one conditional UPDATE: atomic on SQLite and PostgreSQL alike
    (Optuna's read-then-write claim can hand one SQLite row to two processes)."""
    import sqlalchemy

    with storage.engine.begin() as conn:
        res = conn.execute(
            sqlalchemy.text("UPDATE trials SET state = 'RUNNING', datetime_start = :now "
                            "WHERE trial_id = :tid AND state = 'WAITING'"),
            {"now": datetime.now(), "tid": trial_id})
        return res.rowcount == 1


def pop_ticket(study: optuna.Study, storage: BaseStorage) -> int | None:
    """Atomically claim a WAITING trial (set it RUNNING); its id, or ``None`` if none is left.

    ``storage`` is the storage the study was opened on (an ``RDBStorage`` is
    claimed with a conditional UPDATE, others through Optuna's storage API).
    """
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False,
                                           states=(TrialState.WAITING,)):
        if isinstance(storage, RDBStorage):
            if _claim_rdb(storage, t._trial_id):
                return t._trial_id
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def reclaim_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats; the retry callback re-enqueues
    their configuration (Optuna's ``fail_stale_trials``, experimental warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """Number of trials in each state."""
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval():
            storage.record_heartbeat(trial_id)
            self._thread = threading.Thread(target=self._run, args=(storage, trial_id, interval),
                                            daemon=True)
            self._thread.start()

    def _run(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a transient DB error must not kill the trial
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
