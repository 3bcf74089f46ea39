"""The one result every producer returns: :class:`QuantizationResult`.

``tune``, ``analyze``, ``search``, ``compress`` and :func:`bitsmith.autoquantize` all return
it, so code that consumes a producer's answer never depends on which producer ran::

    result = bitsmith.tune.tune(model, calibration, validation)
    result.policy          # the chosen Policy (plain data; result.policy.save("p.yaml"))
    result.model           # the quantized nn.Module of that policy, eval mode
    result.summary         # plain dict: numbers (validation / test marked), rule, guard
    result.run_dir         # the bitsmith.run/1 directory written (None without out_dir)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bitsmith.policy import Policy


def plain(value: Any) -> Any:
    """A JSON-ready copy: tuples -> lists, Paths -> str, NaN / inf -> None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class QuantizationResult:
    """What every producer returns.

    Attributes:
        policy: the chosen :class:`~bitsmith.policy.Policy`.
        model: the quantized model of ``policy`` (calibrated, fine-tuned where the producer
            trains), in eval mode; ``model.bitsmith.policy`` is ``policy``.
        summary: plain data (JSON-ready): ``producer``, ``chosen``, ``rule`` (how the
            policy was chosen), ``metric``, ``validation`` (``examples``, ``fp32``,
            ``chosen``: numbers measured on the validation data), ``test`` (the same on a
            test set, or ``None``), ``cost`` (size_bytes, compression, bitops,
            avg_weight_bits), ``budget``, ``guard`` (the validation guard's verdict),
            ``seconds`` and producer-specific keys.
        run_dir: the ``bitsmith.run/1`` directory written (``bitsmith report RUN_DIR``), or
            ``None`` when no ``out_dir`` was given.
        details: the producer's own full result (``TuneResult``, ``AnalysisResult``,
            ``SearchOutcome``, ``CompressResult``) for callers that need more.
    """

    policy: Policy
    model: nn.Module
    summary: dict[str, Any]
    run_dir: Path | None = None
    details: Any = None

    def __post_init__(self) -> None:
        self.summary = plain(self.summary)

    def to_json(self) -> str:
        """The summary as JSON text."""
        return json.dumps(self.summary, indent=2)


def cost_summary(cost: Any) -> dict[str, Any]:
    """The cost numbers of a :class:`~bitsmith.cost.CostReport` every summary carries."""
    return {"size_bytes": cost.size_bytes, "fp32_bytes": cost.fp32_bytes,
            "compression": cost.compression, "bitops": cost.bitops,
            "avg_weight_bits": cost.avg_weight_bits}


def validation_summary(scorer: Any, fp32: float, chosen: float | None) -> dict[str, Any]:
    """``{"metric", "examples", "fp32", "chosen"}``: numbers measured on the validation data."""
    return {"metric": scorer.describe(), "examples": scorer.examples, "fp32": fp32,
            "chosen": chosen}
