"""Wall-clock of the 100-trial ResNet-20 mixed-precision tune with W worker processes.

Issue 3: "the whole tune on ResNet-20 runs on this 2-core CPU in under 15 minutes for a
100-trial budget". The same study as ``tune_resnet20.py`` part 2 (space, validation split,
warm starts, XGBoost strategy, early stopping), on a fresh SQLite study shared by ``W``
worker processes with one torch thread each (default ``W = 2``: one per core). Wall time
is measured from the start of the workers to the end of the last one, evaluator set-up
(data loading, calibration statistics) included; the study is then checked for exactly
100 finished trials with no duplicate ticket.

Run: python benchmarks/tune_walltime.py [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import optuna

from bitsmith.data import cifar10_protocol
from bitsmith.models import load_pretrained_cifar_resnet
from bitsmith.tune import TorchEvaluator, TuneConfig, TuneSpace, run_study

try:
    from benchmarks.common import quiet_tuning, write_result
    from benchmarks.tune_resnet20 import BITS, N_CALIB, N_TRIALS, cpu_seconds, warm_starts
except ImportError:  # run as a script from benchmarks/
    from common import quiet_tuning, write_result
    from tune_resnet20 import BITS, N_CALIB, N_TRIALS, cpu_seconds, warm_starts

STUDY = "r20-walltime"


def worker(rank: int, url: str, seed: int, results: mp.Queue) -> None:
    """One tuning worker: its own evaluator, then trials until the shared budget is spent."""
    quiet_tuning(1)
    t0 = time.perf_counter()
    proto = cifar10_protocol()
    calib, cy = proto.calibration.tensors()
    model = load_pretrained_cifar_resnet(20)
    space = TuneSpace.from_dict({"preset": "mixed", "weight_bits": list(BITS),
                                   "calib_size": [N_CALIB], "bias_correction": [True]})
    ev = TorchEvaluator(model, calib[:N_CALIB], (calib[N_CALIB:], cy[N_CALIB:]), space,
                        stages=(0.25, 1.0))
    init, _ = warm_starts(model, ev, space, proto)
    setup = time.perf_counter() - t0
    res = run_study(ev, TuneConfig(tolerance=1.0, strategy="xgboost", n_trials=N_TRIALS,
                                   storage=url, study_name=STUDY, seed=seed + rank,
                                   progress=False, save_model=False), initial_configs=init)
    results.put({"rank": rank, "setup_seconds": setup, "cpu_seconds": cpu_seconds(),
                 "wall_seconds": time.perf_counter() - t0,
                 "best": None if res.best is None else res.best.measurement})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'study.db'}"
        ctx = mp.get_context("spawn")
        results: mp.Queue = ctx.Queue()
        t0 = time.perf_counter()
        procs = [ctx.Process(target=worker, args=(r, url, args.seed, results))
                 for r in range(args.workers)]
        for p in procs:
            p.start()
        per_worker = [results.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=STUDY, storage=url)
        trials = study.get_trials(deepcopy=False)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in trials if t.state in done]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    load_end = os.getloadavg()[0]
    per_worker.sort(key=lambda r: r["rank"])
    met = wall < 15 * 60 and len(finished) == N_TRIALS
    lines = [
        f"{N_TRIALS}-trial mixed-precision tune of ResNet-20 (the study of tune_resnet20.py "
        f"part 2), {args.workers} worker process(es) x 1 torch thread on one fresh SQLite "
        f"study.",
        f"Wall time, evaluator set-up included: **{wall:.0f} s ({wall / 60:.1f} min)**; "
        f"target < 15 min: {'MET' if met else 'NOT MET'}.",
        f"Trials in the study: {dict((k, v) for k, v in states.items() if v)} "
        f"({len(finished)} finished; the budget is {N_TRIALS}).",
        f"1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end (2-core "
        "machine shared with other jobs).",
        "",
        "| worker | set-up s | wall s | CPU s |",
        "|---|---:|---:|---:|",
        *[f"| {r['rank']} | {r['setup_seconds']:.0f} | {r['wall_seconds']:.0f} | "
          f"{r['cpu_seconds']:.0f} |" for r in per_worker],
    ]
    write_result("tune_walltime", {"workers": args.workers, "n_trials": N_TRIALS,
                                   "wall_seconds": wall, "states": states,
                                   "per_worker": per_worker, "target_met": met,
                                   "load_average": [load_start, load_end]}, lines)


if __name__ == "__main__":
    main()
