"""Workers of one study: each gets a number when it joins, and its own sampler seed.

Every process that calls :func:`bitsmith.tune.tune` on a study *joins* it and receives the
next free worker number (0 for the first, then 1, 2, ...; a resumed or restarted worker gets
a new number). On an RDB storage the number is claimed with one ``INSERT`` into the study's
system attributes, whose unique ``(study, key)`` constraint makes the claim atomic across
processes and machines (SQLite and PostgreSQL alike).

:func:`worker_seed` derives the worker's sampler seed from ``(seed, worker)``: worker 0 keeps
``seed`` itself (a single-worker study reproduces as before), the others get distinct seeds,
so N workers started with the same ``--seed`` do not replay one sequence of suggestions, and
a resumed worker does not replay the sequence of the run it continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import optuna
from optuna.storages import BaseStorage, RDBStorage

WORKER_PREFIX = "bitsmith.worker."
_LOCK = threading.Lock()


def worker_seed(seed: int | None, worker: int) -> int | None:
    """Sampler seed of worker ``worker`` (``seed`` for worker 0; ``None`` stays ``None``)."""
    if seed is None or worker == 0:
        return seed
    digest = hashlib.sha256(f"bitsmith.worker:{int(seed)}:{int(worker)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _who() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "joined": time.strftime("%Y-%m-%d %H:%M:%S")})


def _claim_rdb(storage: RDBStorage, study_id: int, key: str, value: str) -> bool:
    import sqlalchemy
    import sqlalchemy.exc

    try:
        with storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text(
                "INSERT INTO study_system_attributes (study_id, key, value_json) "
                "VALUES (:sid, :key, :value)"), {"sid": study_id, "key": key, "value": value})
        return True
    except sqlalchemy.exc.IntegrityError:
        return False


def register_worker(study: optuna.Study, storage: BaseStorage, limit: int = 100_000) -> int:
    """Claim the next free worker number of ``study`` (atomic on RDB storages)."""
    study_id = study._study_id
    value = json.dumps(_who())
    for number in range(limit):
        key = f"{WORKER_PREFIX}{number}"
        if isinstance(storage, RDBStorage):
            if _claim_rdb(storage, study_id, key, value):
                return number
            continue
        with _LOCK:                                   # in-memory storage: one process
            if key not in storage.get_study_system_attrs(study_id):
                storage.set_study_system_attr(study_id, key, _who())
                return number
    raise RuntimeError(f"study {study.study_name!r} has {limit} registered workers")


def workers(study: optuna.Study) -> int:
    """How many workers have joined ``study`` so far."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return sum(k.startswith(WORKER_PREFIX) for k in attrs)
