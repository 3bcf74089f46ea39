"""DPQ inside the shared training loop (:func:`bitsmith.training.train`), as one callback.

:class:`DPQCallback` does, at the loop's hooks:

* ``on_train_start``: first masks (schedule's sparsity at the current step), bits under the
  budget, RPC hooks on the activation quantizers;
* ``on_step_start``: RPC fraction ``p(t)``;
* ``after_backward``: gradients of pruned weights set to 0;
* ``on_step_end``: pruned weights set to exactly 0 again (momentum / weight decay cannot
  revive them); on pruning steps of the cubic schedule new, larger masks; after the masks
  change (and every ``realloc_every`` steps) the bit widths are re-chosen under the budget;
* ``on_epoch_end``: bits re-chosen;
* ``state_dict`` / ``load_state_dict``: masks and bits, so that a resumed run continues with
  the same sparsity pattern and precisions.

After :func:`train` returns call :meth:`DPQCallback.finish` (RPC hooks removed, masks applied,
sparsities written into the Policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bitsmith.compress.accounting import compression_report, mask_layouts, sync_sparsity
from bitsmith.compress.bits import (
    DEFAULT_BITS,
    BitChoice,
    allocate_bits,
    infeasible_size,
)
from bitsmith.compress.dpq import dpq_spec, set_layer_spec
from bitsmith.compress.pruning import (
    CubicSchedule,
    apply_masks,
    magnitude_masks,
    mask_gradients,
    mask_sparsity,
)
from bitsmith.compress.rpc import RPC, RPCSchedule
from bitsmith.cost import mask_layout
from bitsmith.graph import layer_weight, quantized_layers
from bitsmith.quantize import quant_info
from bitsmith.training import Callback, TrainState


class DPQCallback(Callback):
    """Gradual magnitude pruning + dynamic DPQ bits + RPC during fine-tuning.

    Args:
        qmodel: the quantized model being trained (DPQ quantizers installed).
        prune_layers: names of the layers to prune.
        schedule: sparsity over steps (``None``: no pruning beyond existing zeros).
        scope, structured: see :func:`magnitude_masks`.
        budget_bytes: size budget for the bit allocation (``None``: bits stay as they are).
        bits: candidate weight bits.
        bit_layers: layers whose bits are chosen (default: ``prune_layers``).
        realloc_every: also re-choose bits every this many steps (0 = only when masks change
            and at epoch ends).
        rpc: RPC schedule (``None``: activations always fully quantized).
        two_level, pseudo: DPQ scale options (see :mod:`bitsmith.compress.dpq`).
    """

    def __init__(self, qmodel: nn.Module, prune_layers: Sequence[str],
                 schedule: CubicSchedule | None = None, scope: str = "layer",
                 structured: bool = False, budget_bytes: float | None = None,
                 bits: Sequence[int] = DEFAULT_BITS, bit_layers: Sequence[str] | None = None,
                 realloc_every: int = 0, rpc: RPCSchedule | None = None,
                 two_level: bool = True, pseudo: bool = True) -> None:
        self.qmodel = qmodel
        self.prune_layers = list(prune_layers)
        self.schedule = schedule
        self.scope, self.structured = scope, structured
        self.budget_bytes = budget_bytes
        self.bits = tuple(bits)
        self.bit_layers = list(bit_layers) if bit_layers is not None else list(prune_layers)
        self.realloc_every = realloc_every
        self.rpc_schedule = rpc
        self.two_level, self.pseudo = two_level, pseudo
        self.masks: dict[str, torch.Tensor] = {}
        self.rpc: RPC | None = None
        self.last_choice: BitChoice | None = None
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    def _params(self) -> dict[str, torch.Tensor]:
        return {n: layer_weight(self.qmodel, n) for n in self.prune_layers}

    def _sync(self) -> None:
        if hasattr(self.qmodel, "bitsmith"):  # a float model (pruning alone) has no Policy
            sync_sparsity(self.qmodel)

    def _prune_to(self, sparsity: float) -> None:
        params = self._params()
        if sparsity <= 0 and not self.masks:
            self.masks = {n: p.detach() != 0 for n, p in params.items()}
        else:
            self.masks = magnitude_masks({n: p.detach() for n, p in params.items()}, sparsity,
                                         self.scope, self.structured)
        apply_masks(params, self.masks)
        self._sync()

    def stage_budget(self) -> float:
        """Budget for the current sparsity that keeps the final bits per survivor.

        With ``F`` the bytes that pruning does not change (scales, biases, float tensors,
        weights of layers whose bits are not chosen), ``M`` mask bytes and ``S`` surviving
        weights of the bit-allocated layers, the final budget ``B`` allows
        ``β = 8·(B - F - M_f) / S_f`` bits per survivor at the final sparsity (masks
        ``M_f``, ``S_f`` simulated by pruning the current weights to the final sparsity).
        Before the final sparsity is reached the budget is ``F + M_t + β·S_t / 8``, so the
        precision stays steady while pruning advances; at the final sparsity it is ``B``.
        """
        assert self.budget_bytes is not None
        final = self.schedule.final if self.schedule is not None else self.sparsity
        if self.schedule is None or self.sparsity >= final - 1e-9:
            return float(self.budget_bytes)
        report = compression_report(self.qmodel)
        table = quant_info(self.qmodel).layer_table
        per_layer = {c.name: c.weight_bytes for c in report.layers}
        chosen = set(self.bit_layers)
        now = mask_layouts(self.qmodel)
        fixed = report.size_bytes - sum(per_layer[n] for n in chosen)
        params = self._params()
        sim = magnitude_masks({n: p.detach() for n, p in params.items()}, final, self.scope,
                              self.structured)
        m_t = s_t = m_f = s_f = 0
        for n in chosen:
            total = table[n].weight_params
            if n in now:
                m_t, s_t = m_t + now[n].nbytes, s_t + now[n].survivors
            else:
                s_t += total
            if n in sim:
                lay = mask_layout(sim[n].reshape(-1).cpu().numpy())
                m_f, s_f = m_f + lay.nbytes, s_f + lay.survivors
            else:
                s_f += total
        beta = 8.0 * (self.budget_bytes - fixed - m_f) / max(s_f, 1)
        if beta < min(self.bits):
            raise infeasible_size(self.budget_bytes,
                                              fixed + m_f + min(self.bits) * s_f / 8)
        return fixed + m_t + beta * s_t / 8.0

    def _reallocate(self, step: int) -> None:
        if self.budget_bytes is None:
            return
        budget = self.stage_budget()
        self.last_choice = allocate_bits(self.qmodel, budget, self.bits,
                                         self.bit_layers, self.two_level, self.pseudo)
        self.events.append({"step": step, "event": "bits", "sparsity": self.sparsity,
                            "budget_bytes": budget, "size_bytes": self.last_choice.size_bytes,
                            "bits": dict(self.last_choice.bits)})

    @property
    def sparsity(self) -> float:
        """Current fraction of pruned weights over the pruned layers."""
        return mask_sparsity(self.masks) if self.masks else 0.0

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, state: TrainState) -> None:
        if not self.masks:
            target = self.schedule.at(state.step) if self.schedule is not None else 0.0
            self._prune_to(target)
            self.events.append({"step": state.step, "event": "prune",
                                "sparsity": self.sparsity})
            self._reallocate(state.step)
        else:  # resumed: masks and bits already restored
            apply_masks(self._params(), self.masks)
            self._sync()
        if self.rpc_schedule is not None and self.rpc is None:
            self.rpc = RPC(self.qmodel, self.rpc_schedule.at(state.step, state.total_steps),
                           seed=self.rpc_schedule.seed)

    def on_step_start(self, state: TrainState) -> None:
        if self.rpc is not None and self.rpc_schedule is not None:
            self.rpc.p = self.rpc_schedule.at(state.step, state.total_steps)

    def after_backward(self, state: TrainState) -> None:
        mask_gradients(self._params(), self.masks)

    def on_step_end(self, state: TrainState) -> None:
        params = self._params()
        apply_masks(params, self.masks)
        changed = False
        if self.schedule is not None and self.schedule.is_pruning_step(state.step):
            target = self.schedule.at(state.step)
            if target > self.sparsity + 1e-9:
                self._prune_to(target)
                changed = True
                self.events.append({"step": state.step, "event": "prune",
                                    "sparsity": self.sparsity})
        periodic = self.realloc_every and state.step % self.realloc_every == 0
        if changed or periodic:
            self._reallocate(state.step)
        state.metrics["sparsity"] = self.sparsity
        if self.rpc is not None:
            state.metrics["rpc_p"] = self.rpc.p

    def on_epoch_end(self, state: TrainState) -> None:
        # Bits are re-chosen while pruning advances; after the schedule's end they stay
        # fixed, so that the last steps fine-tune the precisions that will be deployed.
        if self.schedule is None or state.step <= self.schedule.end:
            self._reallocate(state.step)

    def state_dict(self) -> dict[str, Any]:
        layers = quantized_layers(self.qmodel)
        bits = {n: int(w.bits) for n in self.bit_layers
                if n in layers and (w := layers[n].layer_spec.weight) is not None}
        return {"masks": {n: m.clone() for n, m in self.masks.items()}, "bits": bits,
                "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {n: m.bool() for n, m in state.get("masks", {}).items()}
        self.events = list(state.get("events", []))
        layers = quantized_layers(self.qmodel)
        for n, b in state.get("bits", {}).items():
            spec = layers[n].layer_spec
            if spec.weight is not None and spec.weight.bits != b:
                new = type(spec)(dpq_spec(b, spec.weight.granularity == "channel"), spec.act,
                                 spec.sparsity)
                set_layer_spec(self.qmodel, n, new, pseudo=self.pseudo)

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Remove RPC hooks, enforce the masks, write sparsities into the Policy."""
        if self.rpc is not None:
            self.rpc.remove()
            self.rpc = None
        if self.masks:
            apply_masks(self._params(), self.masks)
        self._sync()
