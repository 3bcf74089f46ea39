"""The XGBoost cost-model sampler: transfer learning, unexplored proposals, exact cost use."""

from __future__ import annotations

import optuna
import pytest

from bitsmith.tune.features import ConfigEncoder
from bitsmith.tune.objectives import Objective
from bitsmith.tune.samplers import DROP_ATTR, TransferRecord, XGBoostSampler, make_sampler
from bitsmith.tune.space import TuneSpace, config_key

SPACE = TuneSpace.from_dict({"calib_size": [1, 100], "float_layers": ["none"],
                               "act_clip": ["minmax", "entropy"], "weight_bits": [4, 8]})
NAMES = ["a", "b", "c"]
DESC = {"nodes": 10.0, "layers": 3.0, "convs": 2.0, "skips": 0.0}


def synthetic_drop(config: dict) -> float:
    """A known landscape: per-channel, 8 bits, 100 images and entropy are each better."""
    return (2.0 * (config["granularity"] == "tensor") + 3.0 * (config["weight_bits"] == 4)
            + 1.0 * (config["calib_size"] == 1) + 0.5 * (config["act_clip"] == "minmax")
            + 0.2 * ["asymmetric", "symmetric", "symmetric_uint8",
                     "symmetric_pow2"].index(config["scheme"]))


def encoder() -> ConfigEncoder:
    return ConfigEncoder(SPACE, NAMES, {n: 10 for n in NAMES}, DESC)


def run(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        config = {k: trial.suggest_categorical(k, list(v))
                  for k, v in SPACE.dimensions(NAMES).items()}
        drop = synthetic_drop(config)
        trial.set_user_attr(DROP_ATTR, drop)
        return 90.0 - drop
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n)
    return [t.params for t in study.trials]


def test_transfer_makes_first_proposal_the_best() -> None:
    other = {**DESC, "nodes": 20.0, "layers": 5.0}
    records = [TransferRecord(c, synthetic_drop(c) + 0.1, other, ["x", "y", "z", "u", "v"])
               for c in SPACE.grid(NAMES)]
    sampler = XGBoostSampler(SPACE, encoder(), Objective("max_accuracy", budget=float("inf")),
                             accuracy_ref=90.0, transfer=records, seed=0)
    first = run(sampler, 1)[0]
    assert synthetic_drop(first) == min(synthetic_drop(c) for c in SPACE.grid(NAMES))


def test_proposals_are_unexplored_and_beat_random() -> None:
    n = 12
    found = run(XGBoostSampler(SPACE, encoder(), Objective("max_accuracy", budget=float("inf")),
                               accuracy_ref=90.0, seed=1, n_startup_trials=4), n)
    assert len({config_key(c) for c in found}) == n                 # never re-proposes
    rand = run(optuna.samplers.RandomSampler(seed=1), n)
    assert min(map(synthetic_drop, found)) <= min(map(synthetic_drop, rand))


def test_min_cost_acquisition_uses_exact_cost() -> None:
    # cost = weight bits: with transfer saying 4-bit loses 3 points, a 4-point tolerance
    # makes the sampler propose the cheaper 4-bit configuration first
    records = [TransferRecord(c, synthetic_drop(c), DESC, NAMES) for c in SPACE.grid(NAMES)]
    sampler = XGBoostSampler(SPACE, encoder(), Objective("min_cost", tolerance=4.0),
                             cost_fn=lambda c: (float(c["weight_bits"]), 32.0),
                             accuracy_ref=90.0, transfer=records, seed=0)
    first = run(sampler, 1)[0]
    assert first["weight_bits"] == 4 and synthetic_drop(first) <= 4.0


def test_make_sampler_names() -> None:
    enc = encoder()
    obj = Objective()
    kinds = {s: type(make_sampler(s, SPACE, enc, obj, seed=0)).__name__
             for s in ("random", "grid", "genetic", "tpe", "xgboost")}
    assert kinds == {"random": "RandomSampler", "grid": "_GridSampler",
                     "genetic": "NSGAIISampler", "tpe": "TPESampler",
                     "xgboost": "XGBoostSampler"}
    with pytest.raises(ValueError, match="unknown strategy"):
        make_sampler("anneal", SPACE, enc, obj)
