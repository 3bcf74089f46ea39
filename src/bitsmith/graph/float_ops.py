"""Every parameterised op that stays float, with its reason.

The LayerTable lists the layers bitsmith can quantize: Conv/ConvTranspose/Linear modules
that run in ``forward``. Everything else that holds parameters stays float, and
:func:`scan_float_ops` says which and why, by running the model once under a
``TorchFunctionMode`` that records every torch function receiving a parameter (or a view
of one) and the module whose ``forward`` made the call:

=============  ===================================================================  =====
kind           what                                                                 warns
=============  ===================================================================  =====
functional     a parameter (or a Conv/Linear module's weight) multiplied by          yes
               ``F.linear`` / ``F.conv*`` / ``matmul`` / ... outside a quantizable
               module: ``F.conv2d(x, self.weight)``
unused         a Conv/Linear module that never runs in forward                       yes
fast path      a Conv/Linear module that runs only when autograd or hooks are on:   yes
               an inference fast path bypasses it under ``no_grad``
recurrent      RNN / LSTM / GRU (no quantized recurrent kernel here)                 yes
unsupported    another module type whose own forward multiplies by its weight        yes
embedding      lookup tables (``nn.Embedding``): no multiply, stored in float32      no
norm           normalisation layers: elementwise scale and shift, float on ONNX      no
               Runtime too
elementwise    other parameters added or multiplied elementwise (class tokens,      no
               position embeddings, layer scales, relative position bias tables)
=============  ===================================================================  =====

``bitsmith.quantize`` warns once with the entries that warn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: kinds that make ``quantize`` warn (a layer one may expect to be quantized is not)
WARN_KINDS = frozenset({"functional", "unused", "fast path", "recurrent", "unsupported"})

_MULTIPLY = frozenset({
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "__matmul__",
    "__rmatmul__", "bilinear", "multi_head_attention_forward",
    "_transformer_encoder_layer_fwd", "_native_multi_head_attention", "lstm", "gru",
    "rnn_tanh", "rnn_relu",
})
_VIEWS = frozenset({"t", "T", "transpose", "permute", "reshape", "view", "__getitem__",
                    "contiguous", "chunk", "split", "unbind", "to", "float", "flatten",
                    "squeeze", "unsqueeze", "mT", "expand", "narrow"})
_IGNORED = frozenset({"__get__", "size", "dim", "numel", "__len__", "requires_grad_",
                      "is_floating_point", "data_ptr", "__format__", "__repr__"})
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_RNN_TYPES = (nn.RNNBase, nn.RNNCellBase)


@dataclass(frozen=True)
class FloatOp:
    """One module (or parameter owner) whose parameters stay float, and why."""

    name: str
    module_type: str
    kind: str
    params: int
    reason: str

    @property
    def warns(self) -> bool:
        return self.kind in WARN_KINDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _func_name(func: Any) -> str:
    return getattr(func, "__name__", None) or str(func)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _ParamUses(TorchFunctionMode):
    """Records ``param name -> {(function, calling module)}``; follows views of parameters."""

    def __init__(self, params: dict[int, str], stack: list[str]) -> None:
        super().__init__()
        self.alias = dict(params)
        self.keep: list[torch.Tensor] = []  # views stay alive so their ids stay unique
        self.stack = stack
        self.uses: dict[str, set[tuple[str, str]]] = defaultdict(set)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _func_name(func)
        out = func(*args, **kwargs)
        if name in _IGNORED:
            return out
        owners = {self.alias[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.alias}
        caller = self.stack[-1] if self.stack else ""
        for owner in owners:
            if name in _VIEWS:
                for t in _tensors(out):
                    self.alias[id(t)] = owner
                    self.keep.append(t)
            else:
                self.uses[owner].add((name, caller))
        return out


def _is_quantizable(module: nn.Module) -> bool:
    from bitsmith.graph.layer_table import is_quantizable

    return is_quantizable(module)


@torch.no_grad()
def scan_float_ops(model: nn.Module, example_inputs: Any, layers: Iterable[str]
                   ) -> list[FloatOp]:
    """The parameterised ops of ``model`` outside the quantizable ``layers`` (that ran).

    Runs ``model`` once (eval, ``no_grad``) on ``example_inputs`` under a recording
    ``TorchFunctionMode`` with hooks that track the calling module.
    """
    quantized = set(layers)
    modules = dict(model.named_modules())
    owner_of: dict[str, str] = {}
    params: dict[int, str] = {}
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if owner in quantized:
            continue
        owner_of[pname] = owner
        params[id(p)] = pname
    if not params:
        return []
    stack: list[str] = []
    ran: set[str] = set()
    handles = []

    def pre(name: str):
        def hook(_m, _args):
            stack.append(name)
            ran.add(name)
        return hook

    def post(_m, _args, _out):
        stack.pop()

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post))
    recorder = _ParamUses(params, stack)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with recorder:
            model(*args)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    by_owner: dict[str, list[str]] = defaultdict(list)
    for pname, owner in owner_of.items():
        by_owner[owner].append(pname)
    ops = []
    for owner, pnames in by_owner.items():
        module = modules.get(owner, model)
        count = sum(model.get_parameter(p).numel() for p in pnames)
        uses = set().union(*(recorder.uses.get(p, set()) for p in pnames))
        kind, reason = _classify(owner, module, uses, owner in ran)
        ops.append(FloatOp(owner or "(model)", type(module).__name__, kind, count, reason))
    return ops


def _classify(owner: str, module: nn.Module, uses: set[tuple[str, str]], ran: bool
              ) -> tuple[str, str]:
    label = owner or "the model"
    multiplies = sorted({(f, c) for f, c in uses if f in _MULTIPLY})
    foreign = [(f, c) for f, c in multiplies if c != owner]
    if isinstance(module, _RNN_TYPES):
        return ("recurrent", f"{type(module).__name__}: bitsmith has no quantized recurrent "
                "kernel (no dynamic int8 RNN); it runs as a float op in ONNX Runtime")
    if _is_quantizable(module):
        if foreign:
            f, c = foreign[0]
            return ("functional", f"its weight is passed to {f}() in {c or 'the model'}"
                    f".forward instead of calling {label}; call the module to quantize it")
        if ran:
            return ("fast path", f"{label} runs only with autograd or hooks active: an "
                    "inference fast path bypasses it under no_grad")
        return ("unused", f"{label} is never called in forward")
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return ("embedding", "lookup table (no multiply), stored in float32")
    if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm"):
        return ("norm", "normalisation (elementwise scale and shift); float in ONNX "
                "Runtime too")
    if multiplies:
        f, c = multiplies[0]
        if c == owner:
            return ("unsupported", f"{type(module).__name__}.forward multiplies by its "
                    f"parameters with {f}(); not a layer type bitsmith swaps (Conv1d/2d/3d, "
                    "ConvTranspose1d/2d, Linear)")
        return ("functional", f"passed to {f}() in {c or 'the model'}.forward; a weight used "
                "functionally cannot be quantized: wrap it in an nn.Linear / nn.Conv module")
    if not uses:
        return ("unused", "not used in forward")
    funcs = ", ".join(sorted({f for f, _ in uses}))
    return ("elementwise", f"used elementwise ({funcs}); not a layer weight")


def format_float_ops(ops: Iterable[FloatOp], only_warning: bool = False) -> str:
    """One line per entry: ``name (type, kind, N params): reason``."""
    return "\n".join(f"  {op.name} ({op.module_type}, {op.kind}, {op.params:,} params): "
                     f"{op.reason}" for op in ops if op.warns or not only_warning)
