"""QAG: automatic conversion of an arbitrary ``nn.Module`` into a quantizable one.

``convert(model, example_inputs)`` copies the model, rewrites modules that hide their
weights into equivalent quantizable ones (:mod:`bitsmith.graph.rewrite`: attention,
transformer fast paths, Conv1D), traces it with torch.fx, folds BatchNorm (optional) and
builds the :class:`LayerTable` (with the float ops and their reasons). When tracing
fails it falls back to the eager model (module swapping still works on any
model, because every quantized layer quantizes its own input) and says which
construct could not be traced.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from bitsmith.errors import InputError
from bitsmith.graph.float_ops import FloatOp, format_float_ops
from bitsmith.graph.fold import fold_batchnorm
from bitsmith.graph.layer_table import LayerTable
from bitsmith.graph.qmodules import make_quantized
from bitsmith.graph.rewrite import rewrite_modules
from bitsmith.graph.trace import TraceFailure, try_trace
from bitsmith.policy import Policy, PolicyError


class ConversionWarning(UserWarning):
    """Conversion succeeded only partly (e.g. tracing failed and the fallback was used)."""


class ConversionError(InputError):
    """The model cannot be converted (e.g. it has no quantizable layer)."""


@dataclass
class ConversionReport:
    """What the conversion did: traced or not, what was folded, what stays float."""

    model: str
    traced: bool
    trace_failure: TraceFailure | None = None
    folded_bn: list[tuple[str, str]] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    unused_layers: list[str] = field(default_factory=list)
    rewritten: list[tuple[str, str]] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.model}: {'traced with torch.fx' if self.traced else 'eager fallback'}"]
        if self.trace_failure is not None:
            lines.append(self.trace_failure.message())
        lines.append(f"BatchNorm folded: {len(self.folded_bn)}; quantized layers: "
                     f"{len(self.quantized)}; kept in float: {len(self.kept_float)}")
        if self.rewritten:
            lines.append(f"rewritten to quantizable modules: {len(self.rewritten)} "
                         f"({', '.join(sorted({what for _, what in self.rewritten}))})")
        if self.unused_layers:
            lines.append(f"layers never called in forward (not quantized): {self.unused_layers}")
        if self.float_ops:
            lines.append("parameterised ops that stay float:")
            lines.append(format_float_ops(self.float_ops))
        return "\n".join(lines)


def convert(model: nn.Module, example_inputs: Any, fold_bn: bool = True,
            leaf_modules: Sequence[type[nn.Module]] = ()
            ) -> tuple[nn.Module, LayerTable, ConversionReport]:
    """Copy ``model`` (eval mode), trace it and fold BN; return (float model, table, report).

    The returned model computes the same function as ``model`` in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    empty = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor) and a.numel() == 0]
    if empty:
        raise ConversionError(f"the example input is empty (shape {empty[0]}); give a batch "
                              "with at least one input")
    work = copy.deepcopy(model).eval()
    rewritten = rewrite_modules(work)
    traced = try_trace(work, leaf_modules)
    report = ConversionReport(model=type(model).__name__, traced=isinstance(traced, fx.GraphModule),
                              rewritten=rewritten)
    if isinstance(traced, fx.GraphModule):
        work = traced
        if fold_bn:
            report.folded_bn = fold_batchnorm(work)
    else:
        report.trace_failure = traced
        warnings.warn(traced.message(), ConversionWarning, stacklevel=2)
    table = LayerTable.from_model(work, example_inputs)
    if len(table) == 0:
        raise ConversionError(
            f"{type(model).__name__} has no quantizable layer (Conv1d/2d/3d, ConvTranspose1d/2d "
            "or Linear) that runs in forward(); nothing to quantize")
    report.unused_layers = table.unused
    report.float_ops = table.float_ops
    return work, table, report


def apply_policy(model: nn.Module, table: LayerTable, policy: Policy,
                 report: ConversionReport | None = None) -> nn.Module:
    """Swap every layer named in ``policy`` (in place) to its quantized twin."""
    if not isinstance(policy, Policy):
        raise PolicyError(f"expected a bitsmith Policy, got {type(policy).__name__}")
    policy.check_layers(table.names)
    for info in table:
        spec = policy.get(info.name)
        if spec is None or spec.is_float:
            if report is not None:
                report.kept_float.append(info.name)
            continue
        make_quantized(model.get_submodule(info.name), spec, info.name,
                       weight_axis=info.weight_channel_axis, act_axis=info.act_channel_axis)
        if report is not None:
            report.quantized.append(info.name)
    return model
