"""Search efficiency of the strategies, replayed against a cached evaluation table.

Every configuration of the finite Quantune-style space (``benchmarks/tune_table.py``:
288 W4A4 configurations of the digits SmallCNN, 360 validation images) was evaluated once;
each strategy x seed runs an Optuna study whose objective looks the accuracy up in the
table (cheap and exact). Objective: maximise accuracy (Quantune's). Reported: the number
of evaluations until the first configuration within 0.1 points of the best one in the
table; a run that never gets there within the trial budget counts as budget + 1.
XGBoost "+transfer" is seeded with the table of another model, a wider SmallCNN trained
with another seed (Quantune's transfer learning across models). ResNet-20/32 tables were
planned but did not fit in the 2-core CPU time available (see docs/tune.md).

Run (after both tables): python benchmarks/tune_efficiency.py
"""

from __future__ import annotations

import json
import statistics
import time
import warnings

import optuna

from bitsmith.tune.features import ConfigEncoder
from bitsmith.tune.objectives import Objective
from bitsmith.tune.samplers import DROP_ATTR, TransferRecord, make_sampler
from bitsmith.tune.space import TuneSpace, config_key

try:
    from benchmarks.common import RESULTS, write_result
except ImportError:  # run as a script from benchmarks/
    from common import RESULTS, write_result

SEEDS = list(range(10))
BUDGET = 100
WITHIN = 0.1


TARGET, SOURCE = "digits", "digits_wide"


def load(name: str) -> tuple[dict, list[str], dict[str, int]]:
    table = json.loads((RESULTS / f"tune_table_{name}.json").read_text())
    return table, table["layer_names"], table["weight_params"]


def replay(strategy: str, seed: int, space: TuneSpace, encoder: ConfigEncoder,
           lookup: dict[str, dict], target: float, transfer: list[TransferRecord]) -> int:
    objective = Objective("max_accuracy", budget=float("inf"))
    sampler = make_sampler(strategy, space, encoder, objective, seed=seed,
                           accuracy_ref=0.0, transfer=transfer, n_trials=BUDGET)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    hit: list[int] = []

    def objective_fn(trial: optuna.Trial) -> float:
        config = {n: trial.suggest_categorical(n, list(c))
                  for n, c in space.dimensions(encoder.layer_names).items()}
        row = lookup[config_key(config)]
        trial.set_user_attr(DROP_ATTR, row["drop"])
        if row["accuracy"] >= target and not hit:
            hit.append(trial.number + 1)
        return row["accuracy"]

    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if hit:
            study.stop()

    study.optimize(objective_fn, n_trials=BUDGET, callbacks=[stop])
    return hit[0] if hit else BUDGET + 1


def main() -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t20, names20, w20 = load(TARGET)
    t32, names32, w32 = load(SOURCE)
    space = TuneSpace(**{k: v for k, v in t20["space"].items()})
    lookup = {config_key(r["config"]): r for r in t20["rows"]}
    best = max(r["accuracy"] for r in t20["rows"])
    target = best - WITHIN - 1e-9
    n_good = sum(r["accuracy"] >= target for r in t20["rows"])
    encoder = ConfigEncoder(space, names20, w20, t20["descriptors"])
    transfer = [TransferRecord(r["config"], r["drop"], t32["descriptors"], names32, w32)
                for r in t32["rows"]]
    runs = {"random": [], "grid": [], "genetic": [], "tpe": [], "xgboost": [],
            "xgboost+transfer": []}
    t0 = time.perf_counter()
    for name in runs:
        strategy = name.split("+")[0]
        for seed in SEEDS:
            runs[name].append(replay(strategy, seed, space, encoder, lookup, target,
                                     transfer if name.endswith("transfer") else []))
    mean = {k: statistics.mean(v) for k, v in runs.items()}
    ref = mean["xgboost+transfer"]
    lines = [
        f"Space: {len(lookup)} configurations (Quantune knobs at W4A4), {TARGET}, accuracy on "
        f"{t20['val_images']} validation images (FP32 {t20['fp32_accuracy']:.2f}%). Best "
        f"{best:.2f}%; {n_good} configurations are within {WITHIN} points of it. Transfer "
        f"source: {SOURCE} table ({len(transfer)} measurements). Budget {BUDGET} trials, "
        f"seeds {SEEDS[0]}..{SEEDS[-1]}; a miss counts as {BUDGET + 1}.",
        "",
        "| strategy | evaluations to within 0.1 pt (mean) | median | per seed | "
        "ratio vs xgboost+transfer |",
        "|---|---:|---:|---|---:|",
        *[f"| {k} | {mean[k]:.1f} | {statistics.median(v):.0f} | {v} | {mean[k] / ref:.2f}x |"
          for k, v in runs.items()],
        "",
        f"Replay time: {time.perf_counter() - t0:.0f} s.",
    ]
    write_result("tune_efficiency", {
        "space_size": len(lookup), "best_accuracy": best, "within": WITHIN,
        "n_within": n_good, "budget": BUDGET, "seeds": SEEDS, "runs": runs, "mean": mean,
        "ratio_vs_xgboost_transfer": {k: mean[k] / ref for k in runs},
    }, lines)


if __name__ == "__main__":
    main()
