"""Several worker processes sharing one study (SQLite, PostgreSQL): the budget is exact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

WORKER = r'''
import sys, time, torch
from torch import nn
from bitsmith.tune import Objective, SearchSpace, TorchEvaluator, tune

url, study, n_trials, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
x = torch.randn(96, 3, 8, 8)
with torch.no_grad():
    y = model(x).argmax(1)

class Slow(TorchEvaluator):
    def evaluate(self, config, on_stage=None):
        time.sleep(delay)
        return super().evaluate(config, on_stage)

space = SearchSpace.from_dict({"preset": "mixed", "calib_size": [32],
                               "weight_bits": [2, 3, 4, 8], "act_clip": ["minmax"],
                               "weight_clip": ["minmax"]})
ev = Slow(model, x[:32], (x, y), space, stages=(1.0,))
res = tune(evaluator=ev, objective=Objective("min_cost", tolerance=5.0), strategy="random",
           n_trials=n_trials, storage=url, study_name=study, seed=None, progress=False,
           heartbeat_interval=1)
print("DONE", res.counts())
'''


def _spawn(script: Path, url: str, study: str, n: int, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), url, study, str(n), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _check_budget(url: str, study: str, n: int) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n, [t.state for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    return trials


def _two_workers(tmp_path: Path, url: str, study: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [_spawn(script, url, study, 10, 0.3) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trials = _check_budget(url, study, 10)
    # no trial was lost or run twice: every ticket finished exactly once, none failed
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert all("DONE" in o for o in outs)


def test_two_workers_share_budget_sqlite(tmp_path: Path) -> None:
    _two_workers(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", "shared")


@pytest.mark.skipif(not os.environ.get("BITSMITH_TEST_POSTGRES_URL"),
                    reason="set BITSMITH_TEST_POSTGRES_URL to a PostgreSQL server")
def test_two_workers_share_budget_postgres(tmp_path: Path) -> None:
    url = os.environ["BITSMITH_TEST_POSTGRES_URL"]
    study = f"shared-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        _two_workers(tmp_path, url, study)
    finally:
        optuna.delete_study(study_name=study, storage=url)
