"""A short auto-tune for ``bitsmith demo`` (the digits SmallCNN), offline, well under a minute."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
from torch import nn

from bitsmith.data import DigitsSplits
from bitsmith.tune.objectives import Objective
from bitsmith.tune.results import TuneResult
from bitsmith.tune.runner import tune
from bitsmith.tune.space import TuneSpace


def run_demo_tune(model: nn.Module, splits: DigitsSplits, out_dir: str | Path,
                  n_trials: int = 20, tolerance: float = 1.0, seed: int = 0,
                  log: Callable[[str], None] = print, progress: bool = True) -> TuneResult:
    """Smallest mixed-precision policy of the trained digits CNN within ``tolerance`` points.

    Calibration: the first 256 training images; validation: the val split (the
    test split stays for reporting). Per-layer weight bits {2, 3, 4, 5, 6, 8}, act
    8 bits, min/max or MSE clipping, XGBoost cost-model strategy. Writes the usual
    outputs (best policy, safetensors model, trial log, Pareto plot) to ``out_dir``.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = TuneSpace.from_dict({"preset": "mixed", "calib_size": [256],
                                   "weight_bits": [2, 3, 4, 5, 6, 8],
                                   "act_clip": ["minmax", "mse"]})
    result = tune(model, splits.train, splits.val, space=space,
                  objective=Objective("min_cost", "size", tolerance=tolerance),
                  strategy="xgboost", n_trials=n_trials, out_dir=out_dir, seed=seed,
                  stages=(1.0,), progress=progress, log=log)
    log(result.summary())
    return result
