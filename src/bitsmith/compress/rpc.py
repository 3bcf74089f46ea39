"""RPC, "random parameters clipping": partial activation quantization during training.

DPQ quantizes activations only partially while training, to limit the accuracy loss, and
fully at the end. bitsmith's reading: during a training forward pass each element of a
quantized layer's input is replaced by its quantized value with probability ``p`` and left
in float otherwise (a fresh Bernoulli mask per element and step), ``x' = where(u < p, Q(x), x)``;
``p`` ramps linearly from ``p_start`` to 1 over the run (:class:`RPCSchedule`). In eval mode,
and once ``p`` reaches 1, the activation is fully quantized, so the evaluated and exported
model is the ordinary quantized one. Gradients pass straight through both branches.

It is implemented as a forward hook on each ``input_quantizer`` (no change to the
quantizer or the layer), removed by :meth:`RPC.remove`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bitsmith.graph import quantized_layers


@dataclass(frozen=True)
class RPCSchedule:
    """Quantized fraction ``p(t)`` of activation elements at training step ``t``.

    ``p`` rises linearly from ``start`` at step 0 to 1 at ``full_at`` (a fraction of the
    planned steps, e.g. 0.8 = the last 20% of training run fully quantized). ``seed`` seeds
    the random stream that picks the quantized elements.
    """

    start: float = 0.5
    full_at: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"RPC start fraction must be in [0, 1], got {self.start}")
        if not 0.0 < self.full_at <= 1.0:
            raise ValueError(f"RPC full_at must be in (0, 1], got {self.full_at}")

    def at(self, step: int, total: int) -> float:
        """``p`` after ``step`` of ``total`` steps."""
        end = max(self.full_at * total, 1.0)
        return min(1.0, self.start + (1.0 - self.start) * step / end)


class RPC:
    """Partial activation quantization on every quantized layer of ``qmodel``.

    Set :attr:`p` (fraction of elements quantized while training); eval is always full.
    """

    def __init__(self, qmodel: nn.Module, p: float = 1.0, seed: int = 0) -> None:
        self.p = float(p)
        self.generator = torch.Generator().manual_seed(seed)
        self.handles = []
        for layer in quantized_layers(qmodel).values():
            q = layer.input_quantizer
            if q is not None:
                self.handles.append(q.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if not module.training or self.p >= 1.0 or getattr(module, "calibrating", False):
            return output
        x = args[0]
        u = torch.rand(x.shape, generator=self.generator).to(x.device)
        return torch.where(u < self.p, output, x)

    def remove(self) -> None:
        """Detach the hooks (the model is then fully quantized in training mode too)."""
        for h in self.handles:
            h.remove()
        self.handles = []
