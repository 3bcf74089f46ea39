"""The shared training loop of bitsmith's training-time producers (search, QAT, DPQ).

* :mod:`bitsmith.training.loop` - :func:`train`, :class:`TrainConfig`, :class:`Callback`,
  :class:`TrainState`, :class:`TrainResult` (methods plug in as callbacks, never copy the loop);
* :mod:`bitsmith.training.checkpoint` - resumable checkpoints (``weights_only=True``);
* :mod:`bitsmith.training.distributed` - torchrun / DDP helpers.

See the module docstring of :mod:`bitsmith.training.loop` and ``docs/search.md``.
"""

from bitsmith.training.loop import (  # re-exported helpers
    Callback,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    TrainState,
    all_reduce_mean,
    default_param_groups,
    dist_info,
    distill_loss,
    init_distributed,
    load_checkpoint,
    resolve_device,
    train,
)

__all__ = [
    "Callback", "NonFiniteLossError", "TrainConfig", "TrainResult", "TrainState",
    "all_reduce_mean", "default_param_groups", "dist_info", "distill_loss", "init_distributed",
    "load_checkpoint", "resolve_device", "train",
]
