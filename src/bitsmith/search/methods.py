"""The search methods: AutoQNN QSS and QPL, and SSPS, as training callbacks.

Every method is a :class:`~bitsmith.training.Callback` *and* the term source of the
:class:`~bitsmith.search.supernet.Supernet` layers: before every forward pass it computes,
for each searched layer ``l``, the mixture coefficients of the weight candidates
(``p_l``, length ``K_w``) and of the activation candidates (``q_l``, length ``K_a``).
In eval mode every method uses its current arg-max choice (a plain quantized model).

Constraint loss (all methods), for each budget kind ``k`` with limit ``B_k``::

    L_budget = λ · Σ_k max(0, E_k / B_k - 1),    E_k = const_k + Σ_l π_lᵀ C_{l,k} ρ_l

with ``π_l``, ``ρ_l`` the method's *cost probabilities* (below) and ``C`` the exact per-layer
cost matrices of the supernet; an activation-memory budget adds
``λ · max(0, max_l ρ_lᵀ a_l / B_act - 1)``. The hinge is linear so the push does not fade
near the budget; the derivation (:mod:`bitsmith.search.derive`) then meets it exactly.

QSS (AutoQNN quantizing-scheme search)
    logits ``α_l`` over the weight candidates ``(scheme, bits)`` and ``β_l`` over the
    activation bits, per layer, or one shared vector for the whole model
    (``share="model"``). Training forward: Gumbel-softmax ``y = softmax((α + g) / τ)``,
    ``g ~ Gumbel(0, 1)``, used as the mixture (``hard=True``: straight-through one-hot).
    ``τ`` decays exponentially from ``tau0`` to ``tau_min`` over the run. Cost
    probabilities: ``softmax(α)``.
QPL (AutoQNN learnable precision)
    one continuous bit width per layer, ``b = b_min + (b_max - b_min) · sigmoid(θ)``,
    between the candidate bit widths ``v_i <= b <= v_{i+1}`` of one scheme:
    ``mode="interp"`` mixes ``(1 - f) · Q_{v_i} + f · Q_{v_{i+1}}`` with
    ``f = (b - v_i) / (v_{i+1} - v_i)``; ``mode="round"`` uses the nearest width in the
    forward pass and the interpolation's gradient in the backward pass (straight-through).
    Cost probabilities: the two-hot ``(1 - f, f)``, so ``E_k`` is the cost of the
    continuous bit widths interpolated linearly.
SSPS (single-path search, sequential decisions)
    logits as QSS, but the forward pass holds *one* path per layer: the Gumbel arg-max
    ``k`` with the straight-through coefficient ``1 + y_k - sg(y_k)`` (value 1; gradient
    to all logits through ``y``), so activations and weights exist once, as in one model.
    After each step (past ``warmup_steps``), the unfixed layers whose certainty
    (``max softmax(α_l)``, or the margin between the top two with ``certainty="margin"``)
    reaches ``threshold`` are fixed to their arg-max, at most ``fix_per_step`` per step and
    only while the expected cost meets the budget and only if the budget stays reachable;
    a fixed layer leaves the search (constant
    one-hot, no gradient) and the step is recorded in :attr:`SSPS.fixed_at`.

Warm start (all methods): ``init_policy`` (a :class:`~bitsmith.policy.Policy`, e.g. the
sensitivity + integer-program allocation of :func:`bitsmith.search.warmstart.ilp_warm_start`)
starts the architecture parameters at its choices: QSS/SSPS logits ``α_l[k] = s`` for the
policy's candidate ``k`` and 0 for the others (``s = init_strength``; initial probability
``e^s / (e^s + K - 1)``), the same for ``β_l``; QPL starts ``θ_l`` at the policy's bit widths.
Layers the policy does not name keep the neutral start; a layer the supernet does not search,
or a spec that is not one of the candidates, raises :class:`SupernetSpaceError`.

Architecture updates: with ``arch_data`` (a held-out map-style dataset, DNAS-style
alternation), every ``arch_every`` steps a batch drawn from it (indices fixed by
``(seed, step)``, so resumes repeat it) gives ``∂(CE + L_budget)/∂(α, β, θ)`` and an Adam
step on the architecture parameters only; without it the architecture parameters are
updated jointly from the training loss. Under DDP the architecture gradients are averaged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from bitsmith.config import check_keys
from bitsmith.cost.budget import Budget
from bitsmith.policy import Policy
from bitsmith.search.supernet import Supernet, SupernetSpaceError, check_budget_feasible
from bitsmith.training import Callback, TrainState, all_reduce_mean

METHODS = ("qss", "qpl", "ssps")


def warm_start_choices(net: Supernet, policy: Policy) -> dict[int, tuple[int, int]]:
    """``search index -> (weight candidate, activation candidate)`` of ``policy``.

    Layers the supernet keeps fixed may appear with their fixed spec; searched layers the
    policy does not name are left out (they keep the neutral start).

    Raises:
        SupernetSpaceError: the policy names a layer that is not in the model, a fixed layer
            with another spec, or a spec that is not among the layer's candidates.
    """
    if not isinstance(policy, Policy):
        raise SupernetSpaceError(f"the warm start must be a Policy, got {type(policy).__name__}")
    index = {n: i for i, n in enumerate(net.names)}
    pairs = {net.spec_of(k, j): (k, j) for k in range(len(net.weight_specs))
             for j in range(len(net.act_specs))}
    out: dict[int, tuple[int, int]] = {}
    unknown = [n for n, _ in policy.items() if n not in index and n not in net.fixed]
    if unknown:
        raise SupernetSpaceError(
            f"the warm-start policy names layer(s) the supernet does not have: {unknown[:5]}; "
            f"searched layers are {net.names[:6]}{' ...' if len(net.names) > 6 else ''}")
    for name, spec in policy.items():
        if name in net.fixed:
            if spec != net.fixed[name]:
                raise SupernetSpaceError(
                    f"warm start: layer {name} is fixed at {net.fixed[name]} by the search "
                    f"space (first_last), the policy gives {spec}")
            continue
        if spec not in pairs:
            cands = ", ".join(w.short() for w in net.weight_specs)
            raise SupernetSpaceError(
                f"warm start: {name} -> {spec} is not a candidate of the search space "
                f"(weights: {cands}; activation bits: "
                f"{[a.bits for a in net.act_specs]})")
        out[index[name]] = pairs[spec]
    return out


def gumbel_like(x: Tensor) -> Tensor:
    """Standard Gumbel noise with the shape of ``x`` (global torch RNG)."""
    u = torch.rand(x.shape, device=x.device).clamp_(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


@dataclass(frozen=True)
class ArchSchedule:
    """When and how the architecture parameters learn (the keyword options of
    :class:`SearchMethod` besides the budget, the penalty and the warm start).

    Attributes:
        arch_batch_size: batch size of the held-out architecture updates.
        arch_every: update the architecture every this many weight steps.
        warmup_steps: steps of weight-only training before architecture updates (and
            fixing, for SSPS).
        tau0, tau_min: Gumbel-softmax temperature schedule (exponential decay over the run).
        seed: seed of the held-out batch draws.
        two_sided: penalise an expected cost *below* the budget too,
            ``λ·max(0, 1 - E/B)``, so that the relaxation sits at the budget (SSPS default:
            its decisions are irreversible).
    """

    arch_batch_size: int = 64
    arch_every: int = 1
    warmup_steps: int = 0
    tau0: float = 5.0
    tau_min: float = 0.5
    seed: int = 0
    two_sided: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ArchSchedule:
        """From keyword options; an unknown one names the valid ones (and the closest)."""
        check_keys(options, [f.name for f in dataclasses.fields(cls)], "search method option")
        return cls(**options)


class SearchMethod(Callback):
    """Common machinery: architecture parameters, constraint loss, arch updates, logging.

    Args:
        net: the supernet (its layers' term source is set to this method).
        budget: the limits (any of size bytes, BitOPs, average weight bits, latency).
        act_budget_bytes: optional peak input-activation bytes per example.
        penalty: ``λ`` of the constraint loss.
        arch_lr: Adam learning rate of the architecture parameters.
        arch_data: held-out dataset for alternate architecture updates (``None`` = joint).
        init_policy: warm start (a Policy over the searched layers, e.g. the ILP allocation
            from sensitivities, :func:`bitsmith.search.warmstart.ilp_warm_start`).
        init_strength: logit advantage ``s`` of the warm-start candidate (QSS/SSPS).
        **schedule: the :class:`ArchSchedule` options (``arch_batch_size``, ``arch_every``,
            ``warmup_steps``, ``tau0``, ``tau_min``, ``seed``, ``two_sided``).
    """

    name = "base"
    path = "expected"

    def __init__(self, net: Supernet, budget: Budget, *, act_budget_bytes: float | None = None,
                 penalty: float = 2.0, arch_lr: float = 0.01, arch_data: Dataset | None = None,
                 init_policy: Policy | None = None, init_strength: float = 3.0,
                 **schedule: Any) -> None:
        sched = ArchSchedule.from_options(schedule)
        if not budget.items() and act_budget_bytes is None:
            raise ValueError("the search needs a budget (size_bytes, bitops, avg_weight_bits, "
                             "latency or act_budget_bytes)")
        check_budget_feasible(net, budget)
        if act_budget_bytes is not None:
            lowest = max(net.fixed_act_bytes, max(float(a.min()) for a in net.act_bytes))
            if lowest > act_budget_bytes:
                from bitsmith.cost.budget import InfeasibleBudgetError

                raise InfeasibleBudgetError("act_bytes", act_budget_bytes, lowest)
        self.net, self.budget, self.act_budget = net, budget, act_budget_bytes
        self.penalty, self.arch_lr = float(penalty), float(arch_lr)
        self.arch_data, self.arch_bs, self.arch_every = arch_data, sched.arch_batch_size, \
            sched.arch_every
        self.warmup, self.tau0, self.tau_min = sched.warmup_steps, sched.tau0, sched.tau_min
        self.seed, self.two_sided = sched.seed, sched.two_sided
        self.kw, self.ka = len(net.weight_specs), len(net.act_specs)
        self.n = len(net.names)
        self.step = 0
        self.total = 1
        self._cache: dict[str, list[list[tuple[int, Tensor]]]] | None = None
        self._cost_probs: tuple[list[Tensor], list[Tensor]] | None = None
        self.init_choices = ({} if init_policy is None
                             else warm_start_choices(net, init_policy))
        if not math.isfinite(init_strength) or init_strength < 0:
            raise ValueError(f"init_strength must be finite and >= 0, got {init_strength}")
        self.init_strength = float(init_strength)
        self.arch = nn.ParameterList(self._make_params())
        if self.init_choices:
            self._warm_start(self.init_choices)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.arch_lr,
                                         betas=(0.5, 0.999))
        net.set_source(self)
        net.set_path(self.path)

    # ------------------------------------------------------------ to override
    def _make_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def _train_terms(self) -> tuple[list[list[tuple[int, Tensor]]],
                                    list[list[tuple[int, Tensor]]],
                                    list[Tensor], list[Tensor]]:
        """Per-layer weight terms, act terms, weight cost probs, act cost probs."""
        raise NotImplementedError

    def probs(self) -> tuple[list[Tensor], list[Tensor]]:
        """Current per-layer probabilities over weight / activation candidates (no noise)."""
        raise NotImplementedError

    def _warm_start(self, choices: dict[int, tuple[int, int]]) -> None:
        """Set the logits of layer ``i`` to ``s`` at ``choices[i]``, 0 elsewhere (QSS/SSPS)."""
        ps = list(self.arch)
        with torch.no_grad():
            for i, (k, j) in choices.items():
                for p, c in ((ps[i], k), (ps[self.n + i], j)):
                    p.zero_()
                    if p.numel() > 1:
                        p[c] = self.init_strength

    # ---------------------------------------------------------------- helpers
    def arch_parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for p in self.arch:
            seen.setdefault(id(p), p)
        return list(seen.values())

    @property
    def tau(self) -> float:
        frac = min(self.step / max(self.total, 1), 1.0)
        return max(self.tau_min, self.tau0 * (self.tau_min / self.tau0) ** frac)

    def choices(self) -> dict[str, tuple[int, int]]:
        """Arg-max ``layer -> (weight candidate, activation candidate)``."""
        pw, pa = self.probs()
        return {n: (int(pw[i].argmax()), int(pa[i].argmax()))
                for i, n in enumerate(self.net.names)}

    def refresh(self) -> None:
        """Draw this forward pass's mixture (call before every training forward)."""
        wt, at, pw, pa = self._train_terms()
        self._cache = {"w": wt, "a": at}
        self._cost_probs = (pw, pa)

    def terms(self, layer: int, kind: str, training: bool) -> list[tuple[int, Tensor]]:
        if training and self._cache is not None:
            return self._cache[kind][layer]
        pw, pa = self.probs()
        p = pw[layer] if kind == "w" else pa[layer]
        one = torch.ones((), device=p.device)
        return [(int(p.argmax()), one)]

    def constraint(self, pw: Sequence[Tensor], pa: Sequence[Tensor]) -> tuple[Tensor, dict]:
        """``λ · Σ max(0, E/B - 1)`` and the expected costs (floats) for logging."""
        loss = torch.zeros((), device=pw[0].device)
        logs: dict[str, float] = {}
        for kind, limit in self.budget.items():
            e = self.net.expected_cost(kind, pw, pa)
            logs[f"expected_{kind}"] = float(e.detach())
            loss = loss + self.penalty * torch.relu(e / limit - 1.0)
            if self.two_sided:  # also pull up to the budget: E -> B
                loss = loss + self.penalty * torch.relu(1.0 - e / limit)
        if self.act_budget is not None:
            e = self.net.expected_peak_act(pa)
            logs["expected_act_bytes"] = float(e.detach())
            loss = loss + self.penalty * torch.relu(e / self.act_budget - 1.0)
        return loss, logs

    def _arch_batch(self, state: TrainState) -> tuple[Tensor, Tensor]:
        assert self.arch_data is not None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + state.step * 31 + state.rank)
        idx = torch.randint(len(cast(Sized, self.arch_data)), (self.arch_bs,), generator=g).tolist()
        batch = default_collate([self.arch_data[i] for i in idx])
        return batch[0].to(state.device), batch[1].to(state.device)

    def _arch_step(self, grads: Sequence[Tensor | None]) -> None:
        params = self.arch_parameters()
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = all_reduce_mean(g.detach().clone())
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def _learning_arch(self) -> bool:
        return self.step >= self.warmup

    # ------------------------------------------------------------- callbacks
    def on_train_start(self, state: TrainState) -> None:
        for p in self.arch_parameters():
            p.data = p.data.to(state.device)
        for st in self.arch_opt.state.values():
            for k, v in st.items():
                if isinstance(v, Tensor) and k != "step":
                    st[k] = v.to(state.device)
        self.total = state.total_steps
        self.step = state.step

    def on_step_start(self, state: TrainState) -> None:
        self.step = state.step
        self.refresh()

    def extra_loss(self, state: TrainState) -> Tensor | None:
        assert self._cost_probs is not None
        loss, logs = self.constraint(*self._cost_probs)
        state.metrics.update(logs)
        state.metrics["tau"] = self.tau
        return loss if self._learning_arch() else None

    def after_backward(self, state: TrainState) -> None:
        params = self.arch_parameters()
        if self.arch_data is None and self._learning_arch():
            self._arch_step([p.grad for p in params])
        for p in params:
            p.grad = None

    def on_step_end(self, state: TrainState) -> None:
        self.step = state.step
        self._cache = None
        if (self.arch_data is not None and self._learning_arch()
                and state.step % self.arch_every == 0):
            x, y = self._arch_batch(state)
            self.refresh()
            model = state.model
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            assert self._cost_probs is not None
            closs, _ = self.constraint(*self._cost_probs)
            params = self.arch_parameters()
            grads = torch.autograd.grad(loss + closs, params, allow_unused=True)
            self._arch_step(grads)
            state.metrics["arch_loss"] = float(loss.detach())
            self._cache = None

    def state_dict(self) -> dict[str, Any]:
        return {"arch": [p.detach().cpu() for p in self.arch_parameters()],
                "arch_opt": self.arch_opt.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, v in zip(self.arch_parameters(), state["arch"]):
            p.data.copy_(v.to(p.device))
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.step = int(state["step"])

    def score(self) -> dict[str, list[float]]:
        """``layer -> (K_w · K_a) scores`` for the derivation: ``-log p_k - log q_j``."""
        pw, pa = self.probs()
        out = {}
        for i, n in enumerate(self.net.names):
            lw = torch.log(pw[i].detach().double().clamp_min(1e-12))
            la = torch.log(pa[i].detach().double().clamp_min(1e-12))
            out[n] = (-(lw[:, None] + la[None, :])).flatten().tolist()
        return out

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per searched layer: arg-max choice and its probability."""
        pw, pa = self.probs()
        pw, pa = [p.detach() for p in pw], [p.detach() for p in pa]
        rows = []
        for i, n in enumerate(self.net.names):
            k, j = int(pw[i].argmax()), int(pa[i].argmax())
            rows.append({"layer": n, "weight": self.net.weight_specs[k].short(),
                         "w_prob": float(pw[i][k]), "act_bits": self.net.act_specs[j].bits,
                         "a_prob": float(pa[i][j]), "fixed_step": None})
        return rows


# --------------------------------------------------------------------------- QSS
class QSS(SearchMethod):
    """AutoQNN quantizing-scheme search: Gumbel-softmax over (scheme, bits) candidates.

    Extra args: ``share`` (``"layer"`` or ``"model"``: one logit vector for all layers),
    ``hard`` (straight-through one-hot samples).
    """

    name = "qss"
    path = "expected"

    def __init__(self, net: Supernet, budget: Budget, *, share: str = "layer",
                 hard: bool = False, **kw: Any) -> None:
        if share not in ("layer", "model"):
            raise ValueError(f"share={share!r}; use 'layer' or 'model'")
        self.share, self.hard = share, hard
        if share == "model" and kw.get("init_policy") is not None:
            raise SupernetSpaceError("a per-layer warm start (init_policy) needs share='layer'")
        super().__init__(net, budget, **kw)

    def _make_params(self) -> list[nn.Parameter]:
        if self.share == "model":
            w, a = nn.Parameter(torch.zeros(self.kw)), nn.Parameter(torch.zeros(self.ka))
            return [w] * self.n + [a] * self.n
        return ([nn.Parameter(torch.zeros(self.kw)) for _ in range(self.n)]
                + [nn.Parameter(torch.zeros(self.ka)) for _ in range(self.n)])

    def _logits(self) -> tuple[list[Tensor], list[Tensor]]:
        ps = list(self.arch)
        return ps[:self.n], ps[self.n:]

    def probs(self) -> tuple[list[Tensor], list[Tensor]]:
        lw, la = self._logits()
        return [torch.softmax(x, 0) for x in lw], [torch.softmax(x, 0) for x in la]

    def _sample(self, logits: Tensor) -> list[tuple[int, Tensor]]:
        if logits.numel() == 1:
            return [(0, torch.ones((), device=logits.device))]
        y = torch.softmax((logits + gumbel_like(logits)) / self.tau, 0)
        if self.hard:
            k = int(y.argmax())
            return [(k, 1.0 + y[k] - y[k].detach())]
        return [(k, y[k]) for k in range(len(y))]

    def _train_terms(self):
        lw, la = self._logits()
        pw, pa = self.probs()
        return [self._sample(x) for x in lw], [self._sample(x) for x in la], pw, pa


# --------------------------------------------------------------------------- QPL
def two_hot(b: Tensor, values: Tensor) -> tuple[Tensor, int]:
    """Interpolation weights ``(K,)`` of ``b`` between sorted ``values`` ``(K,)``, and the
    index ``i`` of the lower neighbour (weights are non-zero only at ``i`` and ``i + 1``)."""
    k = len(values)
    if k == 1:
        return torch.ones(1, device=b.device), 0
    bc = b.clamp(values[0], values[-1])
    i = int(torch.searchsorted(values, bc.detach().reshape(1), right=True).item()) - 1
    i = min(max(i, 0), k - 2)
    f = (bc - values[i]) / (values[i + 1] - values[i])
    idx = torch.tensor([i, i + 1], device=b.device)
    out = torch.zeros(k, device=b.device, dtype=b.dtype).index_put((idx,), torch.stack([1 - f, f]))
    return out, i


class QPL(SearchMethod):
    """AutoQNN learnable precision: continuous bit widths + precision (budget) loss.

    The weight candidates must share one scheme (bits distinct); activation candidates are
    bit widths. Extra args: ``mode`` (``"interp"`` or ``"round"``), ``init_bits`` (initial
    weight bit width, default the middle of the range), ``init_act_bits``.
    """

    name = "qpl"
    path = "expected"

    def __init__(self, net: Supernet, budget: Budget, *, mode: str = "interp",
                 init_bits: float | None = None, init_act_bits: float | None = None,
                 **kw: Any) -> None:
        if mode not in ("interp", "round"):
            raise ValueError(f"QPL mode={mode!r}; use 'interp' or 'round'")
        schemes = {s.scheme for s in net.weight_specs}
        if len(schemes) != 1:
            raise SupernetSpaceError(f"QPL learns bit widths of one scheme; the weight "
                                   f"candidates use {sorted(schemes)} (use QSS for schemes)")
        wb = [s.bits for s in net.weight_specs]
        ab = [s.bits for s in net.act_specs]
        if wb != sorted(wb) or ab != sorted(ab):
            raise SupernetSpaceError("QPL needs the candidate bit widths in increasing order")
        self.mode = mode
        self.wvals = torch.tensor(wb, dtype=torch.float32)
        self.avals = torch.tensor(ab, dtype=torch.float32)
        self.init_bits = init_bits if init_bits is not None else (wb[0] + wb[-1]) / 2
        self.init_act = init_act_bits if init_act_bits is not None else (ab[0] + ab[-1]) / 2
        super().__init__(net, budget, **kw)

    @staticmethod
    def _theta(init: float, values: Tensor) -> float:
        lo, hi = float(values[0]), float(values[-1])
        if hi == lo:
            return 0.0
        r = min(max((init - lo) / (hi - lo), 1e-3), 1 - 1e-3)
        return math.log(r / (1 - r))

    def _make_params(self) -> list[nn.Parameter]:
        tw, ta = self._theta(self.init_bits, self.wvals), self._theta(self.init_act, self.avals)
        return ([nn.Parameter(torch.tensor(tw)) for _ in range(self.n)]
                + [nn.Parameter(torch.tensor(ta)) for _ in range(self.n)])

    def _warm_start(self, choices: dict[int, tuple[int, int]]) -> None:
        """Start the continuous bit widths at the warm-start policy's bit widths."""
        ps = list(self.arch)
        with torch.no_grad():
            for i, (k, j) in choices.items():
                ps[i].fill_(self._theta(float(self.wvals[k]), self.wvals))
                ps[self.n + i].fill_(self._theta(float(self.avals[j]), self.avals))

    def bits(self) -> tuple[list[Tensor], list[Tensor]]:
        """Continuous weight / activation bit widths per layer (scalar tensors)."""
        ps = list(self.arch)
        dev = ps[0].device
        wv, av = self.wvals.to(dev), self.avals.to(dev)
        bw = [wv[0] + (wv[-1] - wv[0]) * torch.sigmoid(t) for t in ps[:self.n]]
        ba = [av[0] + (av[-1] - av[0]) * torch.sigmoid(t) for t in ps[self.n:]]
        return bw, ba

    def _two_hots(self) -> tuple[list[tuple[Tensor, int]], list[tuple[Tensor, int]]]:
        bw, ba = self.bits()
        dev = bw[0].device
        wv, av = self.wvals.to(dev), self.avals.to(dev)
        return [two_hot(b, wv) for b in bw], [two_hot(b, av) for b in ba]

    def probs(self) -> tuple[list[Tensor], list[Tensor]]:
        hw, ha = self._two_hots()
        return [p for p, _ in hw], [p for p, _ in ha]

    def _terms(self, p: Tensor, i: int) -> list[tuple[int, Tensor]]:
        if len(p) == 1:
            return [(0, torch.ones((), device=p.device))]
        if self.mode == "interp":
            return [(i, p[i]), (i + 1, p[i + 1])]
        k = i if float(p[i].detach()) >= float(p[i + 1].detach()) else i + 1
        return [(m, (1.0 if m == k else 0.0) + p[m] - p[m].detach()) for m in (i, i + 1)]

    def _train_terms(self):
        hw, ha = self._two_hots()
        return ([self._terms(p, i) for p, i in hw], [self._terms(p, i) for p, i in ha],
                [p for p, _ in hw], [p for p, _ in ha])

    def score(self) -> dict[str, list[float]]:
        """Derivation scores: squared distance of each candidate to the learned widths."""
        bw, ba = self.bits()
        bw, ba = [b.detach() for b in bw], [b.detach() for b in ba]
        out = {}
        for i, n in enumerate(self.net.names):
            dw = (self.wvals.double() - float(bw[i])) ** 2
            da = (self.avals.double() - float(ba[i])) ** 2
            out[n] = (dw[:, None] + da[None, :]).flatten().tolist()
        return out

    def layer_rows(self) -> list[dict[str, Any]]:
        rows = super().layer_rows()
        bw, ba = self.bits()
        for r, b, a in zip(rows, [b.detach() for b in bw], [a.detach() for a in ba]):
            r["learned_w_bits"], r["learned_a_bits"] = float(b), float(a)
        return rows


# -------------------------------------------------------------------------- SSPS
class SSPS(SearchMethod):
    """Single-path search with sequential decisions (layers fixed by certainty).

    Extra args: ``threshold`` (certainty to fix a layer), ``certainty`` (``"max"`` or
    ``"margin"``), ``fix_per_step`` (at most this many layers fixed per step),
    ``fix_when_feasible`` (fix only while the expected cost meets the budget: while the
    hinge is active every layer is pushed to its cheapest candidate, and that certainty
    says nothing about the task), ``fill`` (a layer is fixed only if the dearest choice for
    the unfixed rest still reaches this fraction of every budget), ``path`` (``"single"``;
    ``"expected"`` or ``"multipath"`` for comparisons). The constraint is two-sided by
    default (``two_sided=True``): the expected cost is held at the budget.
    """

    name = "ssps"
    path = "single"

    def __init__(self, net: Supernet, budget: Budget, *, threshold: float = 0.8,
                 certainty: str = "max", fix_per_step: int = 1, path: str = "single",
                 fix_when_feasible: bool = True, fill: float = 0.98, **kw: Any) -> None:
        if certainty not in ("max", "margin"):
            raise ValueError(f"certainty={certainty!r}; use 'max' or 'margin'")
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold, self.certainty, self.fix_per_step = threshold, certainty, fix_per_step
        self.fix_when_feasible, self.fill = fix_when_feasible, fill
        kw.setdefault("two_sided", True)
        self.path = path
        self.fixed: dict[int, tuple[int, int]] = {}
        self.fixed_at: dict[str, int] = {}
        super().__init__(net, budget, **kw)

    def _make_params(self) -> list[nn.Parameter]:
        return ([nn.Parameter(torch.zeros(self.kw)) for _ in range(self.n)]
                + [nn.Parameter(torch.zeros(self.ka)) for _ in range(self.n)])

    def _one_hot(self, k: int, n: int, dev: torch.device) -> Tensor:
        return nn.functional.one_hot(torch.tensor(k, device=dev), n).float()

    def probs(self) -> tuple[list[Tensor], list[Tensor]]:
        ps = list(self.arch)
        pw, pa = [], []
        for i in range(self.n):
            if i in self.fixed:
                k, j = self.fixed[i]
                dev = ps[i].device
                pw.append(self._one_hot(k, self.kw, dev))
                pa.append(self._one_hot(j, self.ka, dev))
            else:
                pw.append(torch.softmax(ps[i], 0))
                pa.append(torch.softmax(ps[self.n + i], 0))
        return pw, pa

    def _sample(self, logits: Tensor) -> list[tuple[int, Tensor]]:
        if logits.numel() == 1:
            return [(0, torch.ones((), device=logits.device))]
        y = torch.softmax((logits + gumbel_like(logits)) / self.tau, 0)
        if self.path == "single":
            k = int(y.argmax())
            return [(k, 1.0 + y[k] - y[k].detach())]
        return [(k, y[k]) for k in range(len(y))]

    def _train_terms(self):
        ps = list(self.arch)
        wt, at = [], []
        one = torch.ones((), device=ps[0].device)
        for i in range(self.n):
            if i in self.fixed:
                k, j = self.fixed[i]
                wt.append([(k, one)])
                at.append([(j, one)])
            else:
                wt.append(self._sample(ps[i]))
                at.append(self._sample(ps[self.n + i]))
        pw, pa = self.probs()
        return wt, at, pw, pa

    def _certainty(self, p: Tensor) -> float:
        if len(p) == 1:
            return 1.0
        top = torch.topk(p.detach(), 2).values
        return float(top[0]) if self.certainty == "max" else float(top[0] - top[1])

    def _reachable(self, extra: dict[int, tuple[int, int]]) -> bool:
        fixed = {**self.fixed, **extra}
        for kind, limit in self.budget.items():
            low = high = dearest = self.net.const[kind]
            for i, c in enumerate(self.net.costs[kind]):
                low += float(c[fixed[i]]) if i in fixed else float(c.min())
                high += float(c[fixed[i]]) if i in fixed else float(c.max())
                dearest += float(c.max())
            # reachable (cheapest rest within budget) and fillable (dearest rest reaches
            # ``fill`` of what is usable): a fixed cheap layer must not strand budget
            if low > limit * (1 + 1e-9) or high < self.fill * min(limit, dearest):
                return False
        return True

    def _within_budget_now(self, pw: Sequence[Tensor], pa: Sequence[Tensor]) -> bool:
        for kind, limit in self.budget.items():
            if float(self.net.expected_cost(kind, pw, pa)) > limit * (1 + 1e-3):
                return False
        if self.act_budget is not None:
            return float(self.net.expected_peak_act(pa)) <= self.act_budget * (1 + 1e-3)
        return True

    def on_step_end(self, state: TrainState) -> None:
        super().on_step_end(state)
        if not self._learning_arch() or len(self.fixed) == self.n:
            return
        pw, pa = self.probs()
        pw, pa = [p.detach() for p in pw], [p.detach() for p in pa]
        if self.fix_when_feasible and not self._within_budget_now(pw, pa):
            return  # certainty under budget pressure reflects the penalty, not the task
        cands = []
        for i in range(self.n):
            if i in self.fixed:
                continue
            c = min(self._certainty(pw[i]), self._certainty(pa[i]))
            if c >= self.threshold:
                cands.append((c, i))
        for _, i in sorted(cands, reverse=True)[:self.fix_per_step]:
            choice = (int(pw[i].argmax()), int(pa[i].argmax()))
            if self._reachable({i: choice}):
                self.fixed[i] = choice
                self.fixed_at[self.net.names[i]] = state.step
        state.metrics["fixed_layers"] = float(len(self.fixed))

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["fixed"] = {str(i): [k, j] for i, (k, j) in self.fixed.items()}
        out["fixed_at"] = dict(self.fixed_at)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fixed = {int(i): (int(v[0]), int(v[1])) for i, v in state["fixed"].items()}
        self.fixed_at = {k: int(v) for k, v in state["fixed_at"].items()}

    def layer_rows(self) -> list[dict[str, Any]]:
        rows = super().layer_rows()
        for r in rows:
            r["fixed_step"] = self.fixed_at.get(r["layer"])
        return rows


def make_method(name: str, net: Supernet, budget: Budget, **kw: Any) -> SearchMethod:
    """``"qss"`` | ``"qpl"`` | ``"ssps"`` -> the method object (``kw`` to its constructor)."""
    classes = {"qss": QSS, "qpl": QPL, "ssps": SSPS}
    if name not in classes:
        raise ValueError(f"unknown search method {name!r}; use one of {METHODS}")
    return classes[name](net, budget, **kw)
