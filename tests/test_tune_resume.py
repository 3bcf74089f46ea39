"""A worker killed with SIGKILL mid-study resumes with every finished trial kept."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from test_tune_workers import WORKER, _check_budget, _spawn


def test_sigkill_resume_keeps_finished_trials(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _spawn(script, url, "resume", 6, 0.6)
    deadline = time.monotonic() + 60
    done: list = []
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name="resume", storage=url).get_trials()
        except KeyError:
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(done) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(done) >= 2, "the worker did not finish two trials before the kill"
    before = {t.number: (t.params, t.values) for t in
              optuna.load_study(study_name="resume", storage=url).get_trials()
              if t.state == TrialState.COMPLETE}
    again = _spawn(script, url, "resume", 6, 0.0)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0, out
    trials = _check_budget(url, "resume", 6)
    after = {t.number: (t.params, t.values) for t in trials if t.state == TrialState.COMPLETE}
    for number, record in before.items():           # every finished trial kept, unchanged
        assert after[number] == record
    stale = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stale) == 1                            # the killed trial, re-run from a retry
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == stale[0].params or not stale[0].params
