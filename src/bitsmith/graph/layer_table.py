"""The LayerTable: every quantizable layer of a model with its shapes, parameters and MACs.

Built by running the model once on example inputs with forward hooks, so it
works for any ``nn.Module`` (traceable or not) and lists layers in execution
order. Layers that exist but never run in ``forward`` are not quantizable and
are listed in :attr:`LayerTable.unused`; every parameterised op that stays float
(with its reason) is in :attr:`LayerTable.float_ops` (see
:mod:`bitsmith.graph.float_ops`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bitsmith.graph.float_ops import FloatOp, scan_float_ops

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
)


def is_quantizable(module: nn.Module) -> bool:
    """Conv1d/2d/3d, ConvTranspose1d/2d and Linear (and their subclasses)."""
    return isinstance(module, QUANTIZABLE_TYPES)


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the layer ``name`` of ``model`` (a LayerTable layer: it has one)."""
    return _weight_of(model.get_submodule(name), name)


def _weight_of(module: nn.Module, name: str) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"layer {name!r} has no weight tensor")
    return weight


def base_type_name(module: nn.Module) -> str:
    """Name of the torch.nn base class, e.g. ``"Conv2d"`` for a subclass of Conv2d."""
    for cls in type(module).__mro__:
        if cls in QUANTIZABLE_TYPES:
            return cls.__name__
    return type(module).__name__


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer.

    Shapes include the batch dimension of the example inputs; ``macs`` and
    ``activation_elems`` are per example (batch size 1), summed over calls when
    a module runs several times.
    """

    name: str
    type: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_params: int
    bias_params: int
    macs: int
    activation_elems: int
    groups: int
    in_channels: int
    out_channels: int
    calls: int = 1

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def pointwise(self) -> bool:
        return self.type.startswith("Conv") and math.prod(self.weight_shape[2:]) == 1

    @property
    def weight_channel_axis(self) -> int:
        """Axis of output channels in the weight: 1 for transposed convs, else 0."""
        return 1 if self.type.startswith("ConvTranspose") else 0

    @property
    def act_channel_axis(self) -> int:
        """Channel axis of the input activation: -1 for Linear, else 1."""
        return -1 if self.type == "Linear" else 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["depthwise"] = self.depthwise
        return out


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-accumulates per example for one call."""
    batch = inp.shape[0] if inp.dim() > 1 else 1
    w = _weight_of(module, type(module).__name__)
    if isinstance(module, nn.Linear):
        return out.numel() // batch * module.in_features
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        per_in = w.shape[1] * math.prod(w.shape[2:])  # out_ch/groups * kernel
        return inp.numel() // batch * per_in
    per_out = w.shape[1] * math.prod(w.shape[2:])  # in_ch/groups * kernel
    return out.numel() // batch * per_out


class LayerTable(Sequence[LayerInfo]):
    """Ordered (execution order) collection of :class:`LayerInfo`, indexable by position or name."""

    def __init__(self, layers: Sequence[LayerInfo], total_params: int,
                 unused: Sequence[str] = (), float_ops: Sequence[FloatOp] = ()) -> None:
        self._layers = list(layers)
        self._by_name = {layer.name: layer for layer in self._layers}
        self.total_params = int(total_params)
        self.unused = list(unused)
        self.float_ops = list(float_ops)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            try:
                return self._by_name[key]
            except KeyError:
                raise KeyError(f"no quantizable layer named {key!r}") from None
        return self._layers[key]

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    @property
    def types(self) -> dict[str, str]:
        return {layer.name: layer.type for layer in self._layers}

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self._layers)

    @property
    def quantizable_params(self) -> int:
        return sum(layer.weight_params for layer in self._layers)

    def to_rows(self) -> list[dict[str, Any]]:
        return [layer.to_dict() for layer in self._layers]

    def format(self) -> str:
        """Plain-text table."""
        head = ("layer", "type", "weight", "params", "MACs")
        rows = [head] + [
            (l.name, l.type, "x".join(map(str, l.weight_shape)), f"{l.weight_params:,}",
             f"{l.macs:,}") for l in self._layers
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

    @property
    def warned_float_ops(self) -> list[FloatOp]:
        """Float ops one may expect to be quantized (functional weights, unused or bypassed
        layers, recurrent and unsupported modules)."""
        return [op for op in self.float_ops if op.warns]

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Any,
                   scan_float: bool = True) -> LayerTable:
        """Run ``model`` once on ``example_inputs`` (tensor or tuple) and record its layers;
        with ``scan_float`` a second run lists the float ops (:func:`scan_float_ops`)."""
        records: dict[str, dict[str, Any]] = {}
        handles = []

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                if not args or not isinstance(args[0], torch.Tensor):
                    return
                inp = args[0]
                out = output if isinstance(output, torch.Tensor) else None
                if out is None:
                    return
                batch = inp.shape[0] if inp.dim() > 1 else 1
                rec = records.get(name)
                if rec is None:
                    records[name] = {
                        "module": module, "input_shape": tuple(inp.shape),
                        "output_shape": tuple(out.shape), "macs": _macs(module, inp, out),
                        "act": inp.numel() // batch, "calls": 1,
                    }
                else:
                    rec["macs"] += _macs(module, inp, out)
                    rec["act"] += inp.numel() // batch
                    rec["calls"] += 1
            return hook

        named = [(n, m) for n, m in model.named_modules() if is_quantizable(m)]
        for name, module in named:
            handles.append(module.register_forward_hook(make_hook(name)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
                model(*args)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

        layers = []
        for name, rec in records.items():  # insertion order = execution order
            m = rec["module"]
            in_ch = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            out_ch = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            layers.append(LayerInfo(
                name=name, type=base_type_name(m), weight_shape=tuple(m.weight.shape),
                input_shape=rec["input_shape"], output_shape=rec["output_shape"],
                weight_params=m.weight.numel(),
                bias_params=0 if m.bias is None else m.bias.numel(),
                macs=int(rec["macs"]), activation_elems=int(rec["act"]),
                groups=getattr(m, "groups", 1), in_channels=in_ch, out_channels=out_ch,
                calls=rec["calls"],
            ))
        unused = [n for n, _ in named if n not in records]
        total = sum(p.numel() for p in model.parameters())
        float_ops = scan_float_ops(model, example_inputs, records) if scan_float else []
        return cls(layers, total, unused, float_ops)
