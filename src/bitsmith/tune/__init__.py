"""Post-training auto-tuning (Quantune and beyond): search space, evaluator, strategies as
Optuna samplers, objectives, resumable multi-worker studies. See ``docs/tune.md``."""

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

__all__ = [
    "STRATEGIES", "Backend", "ConfigEncoder", "Evaluator", "Measurement",
    "Objective", "OnnxRuntimeBackend", "TuneSpace", "SpaceError", "StorageError",
    "TorchBackend", "TorchEvaluator", "TransferRecord", "TrialRecord", "TuneConfig",
    "TuneError", "TuneResult", "XGBoostSampler", "make_sampler", "model_descriptors", "run_study",
    "tune",
]
