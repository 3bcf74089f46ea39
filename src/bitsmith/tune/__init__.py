"""Post-training auto-tuning (Quantune and beyond): search space, evaluator, strategies as
Optuna samplers, objectives, resumable multi-worker studies. See ``docs/tune.md``.

The names below import their module on first use (:mod:`bitsmith._lazy`): the command line
starts without loading Optuna and SQLAlchemy."""

from typing import TYPE_CHECKING

from bitsmith._lazy import lazy_exports

_MODULES = {
    "bitsmith.tune.api": ("tune",),
    "bitsmith.tune.config": ("TuneConfig",),
    "bitsmith.tune.errors": ("SpaceError", "StorageError", "TuneError"),
    "bitsmith.tune.evaluator": ("Backend", "Evaluator", "Measurement", "TorchBackend",
                                "TorchEvaluator"),
    "bitsmith.tune.features": ("ConfigEncoder", "model_descriptors"),
    "bitsmith.tune.objectives": ("Objective",),
    "bitsmith.tune.results": ("TrialRecord", "TuneResult"),
    "bitsmith.tune.runner": ("run_study",),
    "bitsmith.tune.runtime": ("OnnxRuntimeBackend",),
    "bitsmith.tune.samplers": ("STRATEGIES", "TransferRecord", "XGBoostSampler",
                               "make_sampler"),
    "bitsmith.tune.space": ("TuneSpace",),
}
__all__ = [
    "Backend", "ConfigEncoder", "Evaluator", "Measurement", "Objective", "OnnxRuntimeBackend",
    "STRATEGIES", "SpaceError", "StorageError", "TorchBackend", "TorchEvaluator",
    "TransferRecord", "TrialRecord", "TuneConfig", "TuneError", "TuneResult", "TuneSpace",
    "XGBoostSampler", "make_sampler", "model_descriptors", "run_study", "tune",
]
__getattr__, __dir__ = lazy_exports(
    __name__, {name: module for module, names in _MODULES.items() for name in names})

if TYPE_CHECKING:
    from bitsmith.tune.api import tune
    from bitsmith.tune.config import TuneConfig
    from bitsmith.tune.errors import SpaceError, StorageError, TuneError
    from bitsmith.tune.evaluator import (
        Backend,
        Evaluator,
        Measurement,
        TorchBackend,
        TorchEvaluator,
    )
    from bitsmith.tune.features import ConfigEncoder, model_descriptors
    from bitsmith.tune.objectives import Objective
    from bitsmith.tune.results import TrialRecord, TuneResult
    from bitsmith.tune.runner import run_study
    from bitsmith.tune.runtime import OnnxRuntimeBackend
    from bitsmith.tune.samplers import STRATEGIES, TransferRecord, XGBoostSampler, make_sampler
    from bitsmith.tune.space import TuneSpace
