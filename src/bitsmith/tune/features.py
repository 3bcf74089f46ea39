"""Feature vectors for the gradient-boosted cost model: configuration + model graph.

Quantune (Lee et al., FGCS 2022) regresses accuracy on one-hot configuration
features concatenated with descriptors of the model graph, so that
measurements of *other* models can train the model for a new one (transfer
learning). Here:

* :func:`model_descriptors` — graph descriptors of a model: fx graph nodes,
  quantizable layers, convolutions, depthwise and pointwise convolutions,
  linear layers, skip connections (tensor additions), parameters and MACs
  (log10);
* :class:`ConfigEncoder` — one-hot encoding of the global knobs, model-agnostic
  precision aggregates (weight-count-weighted mean / minimum weight bits,
  first / last layer bits, mean activation bits, fraction of float weights),
  the model descriptors, and — for per-layer spaces — each layer's bit width
  by layer name (NaN for other models' rows: XGBoost treats it as missing).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bitsmith.graph.layer_table import LayerTable
from bitsmith.quantize import prepare
from bitsmith.tune.space import (
    A_PREFIX,
    FLOAT_CHOICE,
    FLOAT_LAYER_SETS,
    GLOBAL_DIMS,
    W_PREFIX,
    Choices,
    TuneSpace,
)

DESCRIPTOR_KEYS = ("nodes", "layers", "convs", "depthwise", "pointwise", "linears", "skips",
                   "log10_params", "log10_macs")
_FLOAT_BITS = 32.0
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}


def descriptors_of(work: nn.Module, table: LayerTable) -> dict[str, float]:
    """Descriptors of an already converted (traced, BN-folded) model and its LayerTable."""
    nodes = skips = 0
    if isinstance(work, fx.GraphModule):
        for node in work.graph.nodes:
            nodes += 1
            if node.op == "call_function" and node.target in _ADD_TARGETS:
                skips += 1
            elif node.op == "call_method" and node.target in ("add", "add_"):
                skips += 1
    convs = [i for i in table if i.type.startswith("Conv")]
    return {
        "nodes": float(nodes), "layers": float(len(table)), "convs": float(len(convs)),
        "depthwise": float(sum(i.depthwise for i in convs)),
        "pointwise": float(sum(i.pointwise for i in convs)),
        "linears": float(sum(i.type == "Linear" for i in table)), "skips": float(skips),
        "log10_params": math.log10(max(table.total_params, 1)),
        "log10_macs": math.log10(max(table.total_macs, 1)),
    }


def model_descriptors(model: nn.Module, example_inputs: Any) -> dict[str, float]:
    """Graph descriptors of ``model`` (module docstring); ``example_inputs``: ``(1, ...)``."""
    work, table, _ = prepare(model, example_inputs)
    return descriptors_of(work, table)


def _bits(value: Any) -> float:
    return _FLOAT_BITS if value == FLOAT_CHOICE else float(value)


class ConfigEncoder:
    """Maps configurations of ``space`` for one model to fixed-length feature vectors.

    Args:
        space: the search space (fixes the one-hot columns of the global knobs).
        layer_names: the model's quantizable layers, in execution order.
        weight_params: layer name -> number of weights (for the weighted aggregates).
        descriptors: :func:`model_descriptors` of the model.
        per_layer: add one column per layer bit width (same-model learning).
    """

    def __init__(self, space: TuneSpace, layer_names: Sequence[str],
                 weight_params: Mapping[str, int], descriptors: Mapping[str, float],
                 per_layer: bool = True) -> None:
        self.space = space
        self.layer_names = list(layer_names)
        self.descriptors = dict(descriptors)
        w = np.array([float(weight_params.get(n, 1)) for n in self.layer_names])
        self._w = w / max(w.sum(), 1.0)
        self.per_layer = per_layer
        self.columns: list[str] = []
        for dim in GLOBAL_DIMS:
            self.columns += [f"{dim}={c}" for c in getattr(space, dim)]
        self.columns += ["w_bits_mean", "w_bits_min", "w_bits_first", "w_bits_last",
                         "a_bits_mean", "a_bits_min", "float_fraction"]
        self.columns += [f"model.{k}" for k in DESCRIPTOR_KEYS]
        self._layer_cols: list[str] = []
        if per_layer:
            if space.per_layer_weight_bits:
                self._layer_cols += [W_PREFIX + n for n in self.layer_names]
            if space.per_layer_act_bits:
                self._layer_cols += [A_PREFIX + n for n in self.layer_names]
        self.columns += self._layer_cols

    def _layer_bits(self, config: Choices) -> tuple[np.ndarray, np.ndarray]:
        space, names = self.space, self.layer_names
        if space.per_layer_weight_bits:
            wb = [_bits(config.get(W_PREFIX + n, space.weight_bits[0])) for n in names]
        else:
            wb = [_bits(config.get("weight_bits", space.weight_bits[0]))] * len(names)
        if space.per_layer_act_bits:
            ab = [_bits(config.get(A_PREFIX + n, space.act_bits[0])) for n in names]
        else:
            ab = [_bits(config.get("act_bits", space.act_bits[0]))] * len(names)
        wb_arr, ab_arr = np.array(wb), np.array(ab)
        fl = FLOAT_LAYER_SETS[config.get("float_layers", space.float_layers[0])]
        if "first" in fl:
            wb_arr[0] = ab_arr[0] = _FLOAT_BITS
        if "last" in fl:
            wb_arr[-1] = ab_arr[-1] = _FLOAT_BITS
        return wb_arr, ab_arr

    def encode(self, config: Choices) -> np.ndarray:
        """``(len(columns),)`` float32 features of one configuration."""
        row: list[float] = []
        for dim in GLOBAL_DIMS:
            value = config.get(dim, getattr(self.space, dim)[0])
            row += [float(value == c) for c in getattr(self.space, dim)]
        wb, ab = self._layer_bits(config)
        row += [float(self._w @ wb), float(wb.min()), float(wb[0]), float(wb[-1]),
                float(ab.mean()), float(ab.min()), float(self._w @ (wb >= _FLOAT_BITS))]
        row += [float(self.descriptors.get(k, np.nan)) for k in DESCRIPTOR_KEYS]
        for col in self._layer_cols:
            row.append(_bits(config[col]) if col in config else np.nan)
        return np.asarray(row, dtype=np.float32)

    def encode_many(self, configs: Sequence[Choices]) -> np.ndarray:
        """``(len(configs), len(columns))`` features."""
        if not configs:
            return np.zeros((0, len(self.columns)), dtype=np.float32)
        return np.stack([self.encode(c) for c in configs])

    def encode_foreign(self, config: Choices, descriptors: Mapping[str, float],
                       layer_names: Sequence[str], weight_params: Mapping[str, int]
                       ) -> np.ndarray:
        """Features of another model's configuration in *this* encoder's columns (transfer).

        Global knobs and aggregates are computed for the other model; this model's
        per-layer columns are NaN (missing).
        """
        other = ConfigEncoder(self.space, layer_names, weight_params, descriptors,
                              per_layer=False)
        base = other.encode(config)
        pad = np.full(len(self._layer_cols), np.nan, dtype=np.float32)
        return np.concatenate([base, pad])
