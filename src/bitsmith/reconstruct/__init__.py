"""Reconstruction-based post-training quantization: learned rounding (AdaRound, BRECQ, QDrop).

The Policy's :class:`~bitsmith.policy.Rounding` selects the method;
``bitsmith.quantize`` runs :func:`reconstruct` after the activation ranges are
calibrated. Modules, one purpose each:

* :mod:`~bitsmith.reconstruct.softround`: soft rounding on a scheme's grid, regulariser;
* :mod:`~bitsmith.reconstruct.blocks`: layer and block units on the traced graph;
* :mod:`~bitsmith.reconstruct.loop`: the optimisation of one unit (LSQ steps, QDrop);
* :mod:`~bitsmith.reconstruct.cache`: finished units on disk, resumable;
* :mod:`~bitsmith.reconstruct.engine`: the driver and its report;
* :mod:`~bitsmith.reconstruct.bias`: empirical bias correction.

See ``docs/reconstruction.md``.
"""

from bitsmith.policy import ROUNDING_METHODS, Rounding
from bitsmith.reconstruct.bias import bias_correct, input_means
from bitsmith.reconstruct.cache import ReconstructionCache, UnitResult
from bitsmith.reconstruct.engine import ReconstructionReport, UnitRecord, reconstruct

__all__ = ["ROUNDING_METHODS", "ReconstructionCache", "ReconstructionReport", "Rounding",
           "UnitRecord", "UnitResult", "bias_correct", "input_means", "reconstruct"]
