"""The :class:`Sensitivity` table: named scores for every (layer, candidate) pair.

One object can hold several scores (``"measured_kl"``, ``"hessian"``,
``"fisher"``, ...), each with the wall-clock seconds it took, so that the
estimators can be compared (:func:`rank_correlation`) and any of them fed to
the integer program (:func:`bitsmith.allocation.ilp`). Scores are "bigger is
worse": the expected damage of quantizing that one layer with that candidate.

JSON form (``sensitivity.json`` of a run directory)::

    {"format": "bitsmith.sensitivity/1",
     "layers": {"conv1": [<LayerSpec dict>, ...], ...},      # the CandidateSpace
     "scores": {"hessian": {"conv1": [0.12, ...], ...}, ...},
     "seconds": {"hessian": 41.0, ...},
     "meta": {...}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitsmith.allocation.candidates import CandidateSpace
from bitsmith.atomic import atomic_write_text
from bitsmith.graph.layer_table import LayerTable
from bitsmith.policy import LayerSpec

FORMAT = "bitsmith.sensitivity/1"

# What each score means (shown in reports); extended by the estimators' modules.
DESCRIPTIONS: dict[str, str] = {
    "measured_kl": "mean KL(float || quantized) of the softmax outputs, one layer quantized",
    "measured_loss": "increase of the mean cross-entropy loss, one layer quantized",
    "measured_accuracy": "top-1 accuracy drop in points, one layer quantized",
    "hessian": "HAWQ-V2: Tr(H_l)/n_l * ||Q(W_l) - W_l||^2 (Hutchinson trace)",
    "fisher": "1/2 mean_n (g_n . dW_l)^2: empirical Fisher quadratic form of the layer block",
    "fisher_diag": "1/2 sum_j F_jj dW_j^2: diagonal empirical Fisher",
}


@dataclass
class Sensitivity:
    """Scores per (layer, candidate) over a :class:`CandidateSpace`.

    Attributes:
        space: the layers and their candidates.
        scores: ``score name -> layer -> [value per candidate]`` (same order as
            ``space[layer]``); larger = more damaging. Units depend on the score
            (nats for KL / loss, accuracy points, loss units for the estimates).
        seconds: ``score name -> wall-clock seconds`` spent producing it (scores
            computed together share the same pass and report its time).
        meta: free-form details (images used, iterations, traces, ...).
    """

    space: CandidateSpace
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for metric, per_layer in self.scores.items():
            self._check(metric, per_layer)

    def _check(self, metric: str, per_layer: Mapping[str, Sequence[float]]) -> None:
        missing = [n for n in self.space if n not in per_layer]
        if missing:
            raise ValueError(f"score {metric!r} has no values for layers {missing[:5]}")
        for name, specs in self.space.items():
            if len(per_layer[name]) != len(specs):
                raise ValueError(f"score {metric!r}, layer {name}: {len(per_layer[name])} values "
                                 f"for {len(specs)} candidates")

    @property
    def metrics(self) -> list[str]:
        return list(self.scores)

    def add(self, metric: str, per_layer: Mapping[str, Sequence[float]], seconds: float) -> None:
        """Add (or replace) one score."""
        self._check(metric, per_layer)
        self.scores[metric] = {n: [float(v) for v in per_layer[n]] for n in self.space}
        self.seconds[metric] = float(seconds)

    def merge(self, other: Sensitivity) -> Sensitivity:
        """A new table with the scores of both (the spaces must be equal)."""
        if self.space.to_dict() != other.space.to_dict():
            raise ValueError("cannot merge sensitivities over different candidate spaces")
        return Sensitivity(self.space, {**self.scores, **other.scores},
                           {**self.seconds, **other.seconds}, {**self.meta, **other.meta})

    def get(self, metric: str) -> dict[str, list[float]]:
        """``layer -> [value per candidate]`` of one score (KeyError lists the known ones)."""
        if metric not in self.scores:
            raise KeyError(f"no sensitivity score {metric!r}; have {self.metrics}")
        return self.scores[metric]

    def flat(self, metric: str) -> np.ndarray:
        """All values of ``metric`` in :meth:`CandidateSpace.pairs` order, shape ``(n_pairs,)``."""
        vals = self.get(metric)
        return np.array([vals[n][i] for n, i, _ in self.space.pairs()], dtype=np.float64)

    def value(self, metric: str, layer: str, spec: LayerSpec) -> float:
        """The score of one candidate of one layer."""
        return self.get(metric)[layer][self.space[layer].index(spec)]

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "layers": self.space.to_dict(),
                "labels": {n: self.space.labels(n) for n in self.space},
                "scores": self.scores, "seconds": self.seconds,
                "descriptions": {m: DESCRIPTIONS.get(m, "") for m in self.scores},
                "meta": _jsonable(self.meta)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], table: LayerTable) -> Sensitivity:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        if found != FORMAT:
            raise ValueError(f"not a sensitivity file (format={found!r}, expected {FORMAT!r})")
        space = CandidateSpace.from_dict(table, data["layers"])
        return cls(space, {m: dict(v) for m, v in data.get("scores", {}).items()},
                   dict(data.get("seconds", {})), dict(data.get("meta", {})))

    @classmethod
    def load(cls, path: str | Path, table: LayerTable) -> Sensitivity:
        """Read a file written by :meth:`save` (unreadable files raise ``ConfigError``)."""
        from bitsmith.config import ConfigError, read_structured_file

        data = read_structured_file(path, "sensitivity file")
        try:
            return cls.from_dict(data, table)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"sensitivity file {path}: {err}") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def rank_correlation(sens: Sensitivity, estimated: str, measured: str,
                     by: str = "all") -> float:
    """Spearman rank correlation between two scores.

    Args:
        by: ``"all"`` pools every (layer, candidate) pair; ``"choice"`` computes
            one correlation across layers per candidate position (e.g. per bit
            width) and returns their mean (positions where either score is
            constant are skipped).

    Returns:
        rho in [-1, 1] (``nan`` when undefined, e.g. constant scores).
    """
    from scipy.stats import spearmanr

    if by == "all":
        a, b = sens.flat(estimated), sens.flat(measured)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(spearmanr(a, b).statistic)
    if by != "choice":
        raise ValueError(f"by={by!r} is unknown; use 'all' or 'choice'")
    rhos = [r for r in per_choice_correlation(sens, estimated, measured).values()
            if not math.isnan(r)]
    return float(np.mean(rhos)) if rhos else float("nan")


def per_choice_correlation(sens: Sensitivity, estimated: str, measured: str
                           ) -> dict[int, float]:
    """Spearman rho across layers for each candidate position (layers with fewer
    candidates are left out of the positions they lack)."""
    from scipy.stats import spearmanr

    ea, me = sens.get(estimated), sens.get(measured)
    width = max(len(c) for c in sens.space.values())
    out: dict[int, float] = {}
    for i in range(width):
        names = [n for n in sens.space if len(sens.space[n]) > i]
        a = np.array([ea[n][i] for n in names])
        b = np.array([me[n][i] for n in names])
        if len(names) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            out[i] = float("nan")
        else:
            out[i] = float(spearmanr(a, b).statistic)
    return out
