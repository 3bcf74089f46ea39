"""A worker killed with SIGKILL mid-study resumes with every finished trial kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
from optuna.trial import TrialState
from test_tune_workers import (
    KILL_HEARTBEAT,
    WAIT,
    WORKER,
    Lines,
    _check_budget,
    _check_run_dir,
    _spawn,
)

from bitsmith.tune.distinct import is_duplicate


def test_sigkill_resume_keeps_finished_trials(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "run"
    # the first worker finishes two evaluations, then hangs inside the third: killed there
    proc = _spawn(script, url, "resume", 6, 0.0, out, hang_after=2, heartbeat=KILL_HEARTBEAT)
    lines = Lines(proc)
    reached = lines.wait_for("EVAL 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert reached, f"the worker never started its third evaluation: {lines.lines}"
    trials = optuna.load_study(study_name="resume", storage=url).get_trials()
    before = {t.number: (t.params, t.values) for t in trials if t.state == TrialState.COMPLETE}
    assert len(before) >= 2 and any(t.state == TrialState.RUNNING for t in trials)
    again = _spawn(script, url, "resume", 6, 0.0, out, heartbeat=KILL_HEARTBEAT)
    output = again.communicate(timeout=WAIT)[0]
    assert again.returncode == 0, output
    trials = _check_budget(url, "resume", 6)
    after = {t.number: (t.params, t.values) for t in trials if t.state == TrialState.COMPLETE}
    for number, record in before.items():           # every finished trial kept, unchanged
        assert after[number] == record
    stale = [t for t in trials if t.state == TrialState.FAIL and not is_duplicate(t)]
    assert len(stale) == 1                            # the killed trial, re-run from a retry
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == stale[0].params or not stale[0].params
    _check_run_dir(out, trials)                       # the run directory survived the kill
