"""torch.fx tracing with an explanation of what could not be traced."""

from __future__ import annotations

import linecache
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

_TORCH_DIR = str(Path(torch.__file__).parent)


@dataclass(frozen=True)
class TraceFailure:
    """Why ``torch.fx`` could not trace a model: the error and the user code that caused it."""

    model: str
    error: str
    location: str  # "file.py:42 in forward"
    code: str  # the source line

    def message(self) -> str:
        where = f" at {self.location}: `{self.code}`" if self.location else ""
        return (f"torch.fx could not trace {self.model}{where} ({self.error}). "
                "Falling back to module swapping: weights and layer inputs are still "
                "quantized, but BatchNorm is not folded. To trace it, avoid data-dependent "
                "Python control flow in forward() or pass that submodule's type in "
                "leaf_modules.")


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf_types: Sequence[type[nn.Module]]) -> None:
        super().__init__()
        self._leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from bitsmith.graph.rewrite import ExplicitModule

        if isinstance(m, ExplicitModule) or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _user_frame(err: BaseException) -> tuple[str, str]:
    """The innermost traceback frame outside torch: (``file:line in func``, source line)."""
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith(_TORCH_DIR) and "bitsmith" not in frame.filename:
            code = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
            return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}", code
    return "", ""


def try_trace(model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = ()
              ) -> fx.GraphModule | TraceFailure:
    """Symbolically trace ``model``; on failure return a :class:`TraceFailure` (never raise)."""
    tracer = _LeafTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as err:  # any tracing failure means: fall back
        location, code = _user_frame(err)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return TraceFailure(type(model).__name__, f"{type(err).__name__}: {first}", location, code)
