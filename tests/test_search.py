"""Training-time mixed-precision search (bitsmith.search): budgets, resume, DDP, errors."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
from conftest import TinyNet, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bitsmith.cost import Budget, InfeasibleBudgetError, estimate, within_budget
from bitsmith.graph.convert import ConversionError
from bitsmith.policy import Policy
from bitsmith.search import (
    SearchConfig,
    SupernetSpace,
    SupernetSpaceError,
    build_supernet,
    derive_policy,
    load_result,
    make_method,
    search,
)
from bitsmith.search.methods import two_hot
from bitsmith.training import Callback, NonFiniteLossError, TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = SupernetSpace.uniform_bits((2, 3, 4, 8), (4, 8), observer="minmax", first_last="same")


def _data(n: int = 64, size: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g),
                         torch.randint(0, 10, (n,), generator=g))


def _loader(ds: TensorDataset, bs: int = 16) -> DataLoader:
    return DataLoader(ds, batch_size=bs, shuffle=True)


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=4, lr=1e-3, progress=False, log_every=2, find_unused_parameters=True)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------- budgets
@pytest.mark.parametrize("method", ["qss", "qpl", "ssps"])
@pytest.mark.parametrize("kind,value", [("avg_weight_bits", 3.0), ("avg_weight_bits", 4.5),
                                        ("size_bytes", None), ("bitops", None)])
def test_derived_policy_never_exceeds_budget(method, kind, value):
    ds = _data()
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    if value is None:  # 40 % of the way from the cheapest to the dearest policy
        lo = net.const[kind] + sum(float(c.min()) for c in net.costs[kind])
        hi = net.const[kind] + sum(float(c.max()) for c in net.costs[kind])
        value = lo + 0.4 * (hi - lo)
    budget = Budget(**{kind: value})
    kw = {"arch_data": ds, "arch_batch_size": 8} if method != "qpl" else {"init_bits": 8.0}
    m = make_method(method, net, budget, arch_lr=0.1, **kw)
    train(net.model, _loader(ds), _cfg(), callbacks=[m])
    d = derive_policy(m)
    cost = estimate(net.table, d.policy)
    assert within_budget(cost, budget)
    assert {"size_bytes": cost.size_bytes, "bitops": cost.bitops,
            "avg_weight_bits": cost.avg_weight_bits}[kind] <= value * (1 + 1e-9)
    assert set(d.policy) == set(net.table.names)


def test_torchvision_resnet18_budget():
    tvm = pytest.importorskip("torchvision.models")
    model = tvm.resnet18(weights=None, num_classes=10).eval()
    ds = _data(8, 32)
    space = SupernetSpace.uniform_bits((2, 4, 8), (8,), observer="minmax")
    net = build_supernet(model, ds.tensors[0][:2], space, [(ds.tensors[0][:4], None)])
    assert len(net.names) == len(net.table) - 2  # first/last fixed at W8A8
    for bits in (3.0, 5.0):
        budget = Budget(avg_weight_bits=bits)
        m = make_method("qss", net, budget, arch_lr=0.1)
        d = derive_policy(m)
        assert d.cost.avg_weight_bits <= bits + 1e-9
        assert d.policy[net.table.names[0]].weight.bits == 8


def test_multi_budget_repair_meets_all():
    ds = _data()
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    hi_bits = net.const["bitops"] + sum(float(c.max()) for c in net.costs["bitops"])
    budget = Budget(avg_weight_bits=4.0, bitops=0.5 * hi_bits)
    m = make_method("qss", net, budget)
    with torch.no_grad():  # make the arg-max the most expensive policy: repair must act
        for p in m.arch_parameters():
            p.copy_(torch.arange(len(p), dtype=torch.float32))
    d = derive_policy(m)
    assert d.repaired
    assert within_budget(d.cost, budget)


# ----------------------------------------------------------------------- methods
def test_two_hot_interpolates_with_gradient():
    b = torch.tensor(3.25, requires_grad=True)
    w, i = two_hot(b, torch.tensor([2.0, 3.0, 4.0]))
    assert i == 1
    assert torch.allclose(w, torch.tensor([0.0, 0.75, 0.25]))
    (w * torch.tensor([0.0, 3.0, 4.0])).sum().backward()
    assert math.isclose(float(b.grad), 1.0, rel_tol=1e-6)  # d(3(1-f) + 4f)/db = 1


def test_single_path_runs_one_quantizer_per_tensor():
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    for layer in net.layers():
        for q in list(layer.weight_quantizers) + list(layer.act_quantizers):
            q.register_forward_hook(hook)
    n_layers = len(net.names)
    # single path: one weight and one activation quantizer per layer; multipath: all
    # 4 weight and 2 activation candidates (and K_w * K_a convolutions).
    for path, expected in (("single", 2 * n_layers), ("multipath", 6 * n_layers)):
        m = make_method("ssps", net, Budget(avg_weight_bits=4.0), path=path)
        net.model.train()
        m.refresh()
        calls["n"] = 0
        net.model(ds.tensors[0][:2])
        assert calls["n"] == expected


def test_ssps_fixes_layers_and_records_step():
    ds = _data()
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    m = make_method("ssps", net, Budget(avg_weight_bits=6.0), arch_data=ds, arch_batch_size=8,
                    arch_lr=0.5, threshold=0.3, fix_per_step=2)
    train(net.model, _loader(ds), _cfg(max_steps=8), callbacks=[m])
    assert m.fixed_at, "no layer was fixed"
    assert all(1 <= s <= 8 for s in m.fixed_at.values())
    rows = {r["layer"]: r for r in derive_policy(m).rows}
    for name, step in m.fixed_at.items():
        assert rows[name]["fixed_step"] == step
        i = net.names.index(name)
        k, j = m.fixed[i]
        assert [t[0] for t in m.terms(i, "w", True)] == [k]


def test_qss_model_wide_share_uses_one_vector():
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    m = make_method("qss", net, Budget(avg_weight_bits=4.0), share="model")
    assert len(m.arch_parameters()) == 2
    pw, _ = m.probs()
    assert all(torch.equal(p, pw[0]) for p in pw)


# ------------------------------------------------------------------------ resume
class _Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, state) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt


def _ssps_run(tmp, crash_at=None):
    torch.manual_seed(0)
    ds = _data()
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    m = make_method("ssps", net, Budget(avg_weight_bits=4.0), arch_data=ds, arch_batch_size=8,
                    arch_lr=0.3, threshold=0.3)
    cbs = [m] + ([_Crash(crash_at)] if crash_at else [])
    res = train(net.model, _loader(ds), _cfg(max_steps=9, checkpoint_dir=str(tmp),
                                             checkpoint_every=3), callbacks=cbs)
    return net, m, res


def test_resume_equals_uninterrupted(tmp_path):
    net_a, m_a, res_a = _ssps_run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _ssps_run(tmp_path / "b", crash_at=5)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    net_b, m_b, res_b = _ssps_run(tmp_path / "b")
    assert res_b.resumed_from == 3 and res_b.steps == res_a.steps == 9
    sa, sb = net_a.model.state_dict(), net_b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for pa, pb in zip(m_a.arch_parameters(), m_b.arch_parameters()):
        assert torch.equal(pa, pb)
    assert m_a.fixed_at == m_b.fixed_at
    assert res_a.history == res_b.history


# -------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _IgnoreFcBias(Callback):
    """DDP leaves ``fc.bias`` alone; train() must average its gradient itself."""

    def ddp_ignored_parameters(self, model):
        return ["fc.bias"]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ds = _data()
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE,
                         DataLoader(ds, batch_size=16))
    m = make_method("qss", net, Budget(avg_weight_bits=4.0), arch_data=ds, arch_batch_size=8)
    res = train(net.model, DataLoader(ds, batch_size=8, shuffle=True),
                _cfg(max_steps=3, device="cpu", checkpoint_dir=out),
                callbacks=[m, _IgnoreFcBias()])
    torch.save({"model": net.model.state_dict(), "arch": [p.detach() for p in
                                                          m.arch_parameters()],
                "steps": res.steps}, os.path.join(out, f"rank{rank}.pt"))


def test_ddp_two_cpu_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == 3
    for k, v in r0["model"].items():  # DDP keeps every replica identical
        assert torch.allclose(v, r1["model"][k]), k
    for a, b in zip(r0["arch"], r1["arch"]):  # arch grads averaged by the callback
        assert torch.allclose(a, b)
    assert (tmp_path / "last.pt").is_file()


# ------------------------------------------------------------------- error paths
def test_infeasible_budget_names_the_minimum():
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    with pytest.raises(InfeasibleBudgetError) as err:
        make_method("qss", net, Budget(avg_weight_bits=1.5))
    assert err.value.minimum == pytest.approx(2.0)
    assert "minimum" in str(err.value) and "2" in str(err.value)
    lowest = net.const["size_bytes"] + sum(float(c.min()) for c in net.costs["size_bytes"])
    with pytest.raises(InfeasibleBudgetError) as err:
        make_method("ssps", net, Budget(size_bytes=lowest - 1))
    assert err.value.minimum == pytest.approx(lowest)
    assert f"{lowest:,.6g}" in str(err.value)


@pytest.mark.parametrize("space,match", [
    (SupernetSpace(weight=()), "empty"),
    (SupernetSpace(act_bits=()), "empty"),
    (SupernetSpace(weight=(("nosuch", 4),)), "unknown scheme"),
    (SupernetSpace(weight=(("binary", 4),)), "binary"),
    (SupernetSpace(weight=(("uniform_symmetric", 4), ("uniform_symmetric", 4))), "duplicates"),
    (SupernetSpace(weight=(("uniform_symmetric",),)), "pair"),
])
def test_invalid_candidate_sets(space, match):
    with pytest.raises(SupernetSpaceError, match=match):
        build_supernet(TinyNet().eval(), torch.randn(2, 3, 8, 8), space)


def test_qpl_rejects_several_schemes():
    space = SupernetSpace(weight=(("uniform_symmetric", 4), ("pot", 4)), observer="minmax",
                        first_last="same")
    net = build_supernet(TinyNet().eval(), torch.randn(2, 3, 8, 8), space)
    with pytest.raises(SupernetSpaceError, match="one scheme"):
        make_method("qpl", net, Budget(avg_weight_bits=4))


def test_model_without_quantizable_layers():
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.raises(ConversionError, match="no quantizable layer"):
        build_supernet(model, torch.randn(2, 3, 4, 4), SPACE)


class _NaNAt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def extra_loss(self, state):
        return torch.tensor(float("nan")) if state.step == self.at else None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    ds = _data()
    model = randomize_bn(TinyNet())
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as err:
        train(model, _loader(ds), _cfg(max_steps=20, checkpoint_dir=str(tmp_path),
                                       checkpoint_every=2), callbacks=[_NaNAt(5)])
    assert "step 5" in str(err.value) and "(step 4)" in str(err.value)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="distill_weight"):
        TrainConfig(distill_weight=2.0)


# ---------------------------------------------------------------------- pipeline
def test_run_search_writes_run_dir_and_reloads(tmp_path):
    from bitsmith.rundir import load_run

    ds = _data()
    model = randomize_bn(TinyNet())
    budget = Budget(avg_weight_bits=4.0)
    st = SearchConfig(method="ssps", budget=budget, space=SPACE, search=_cfg(max_steps=3),
                      qat=_cfg(max_steps=2, distill_weight=0.5), method_kw={"threshold": 0.3},
                      labels={"model": "tiny", "dataset": "random"})
    res = search(model, _loader(ds), ds, config=st, out_dir=tmp_path, train_data=_loader(ds))
    o = res.details
    assert res.policy == o.policy and res.model is o.qmodel and res.run_dir == tmp_path
    assert o.derivation.cost.avg_weight_bits <= 4.0 + 1e-9
    run = load_run(tmp_path)
    assert run.search and {p.get("label") for p in run.search} == {"search", "qat"}
    for name in ("weights.safetensors", "policy.yaml", "search_layers.json", "result.json"):
        assert (tmp_path / name).is_file(), name
    # The report's layer table says when each searched layer was decided (SSPS: the step
    # it was fixed at; "end" = at the derivation); the fixed first/last layers stay blank.
    from bitsmith.report.summary import build_summary
    from bitsmith.report.tables import layer_table

    heads, rows = layer_table(build_summary(run))
    col = heads.index("fixed at step")
    fixed_col = {r[1]: r[col] for r in rows}
    for r in o.derivation.rows:
        step = o.method.fixed_at.get(r["layer"])
        assert fixed_col[r["layer"]] == ("end" if step is None else str(step))
    assert all(fixed_col[n] == "" for n in net_fixed_names(o))
    q2 = load_result(model, ds.tensors[0][:4], tmp_path)
    o.qmodel.eval()
    x = ds.tensors[0][:8]
    assert torch.allclose(o.qmodel(x), q2(x), atol=1e-6)
    # A rerun resumes: both phases are already complete, so nothing is retrained.
    o2 = search(model, _loader(ds), ds, config=st, out_dir=tmp_path,
                train_data=_loader(ds)).details
    assert o2.search_result.resumed_from == 3 and o2.policy == o.policy


def net_fixed_names(o) -> list[str]:
    return [n for n in o.net.table.names if n not in o.net.names]


def test_report_rejects_search_layers_of_unknown_layers(tmp_path):
    from bitsmith.rundir import SEARCH_LAYERS_JSON, RunDirError, load_run

    ds = _data()
    st = SearchConfig(method="qpl", budget=Budget(avg_weight_bits=4.0), space=SPACE,
                      search=_cfg(max_steps=1), run_qat=False)
    search(randomize_bn(TinyNet()), _loader(ds), ds, config=st, out_dir=tmp_path,
           train_data=_loader(ds))
    assert load_run(tmp_path).search_layers
    (tmp_path / SEARCH_LAYERS_JSON).write_text('{"layers": [{"layer": "nope"}]}')
    with pytest.raises(RunDirError, match="nope"):
        load_run(tmp_path)
    (tmp_path / SEARCH_LAYERS_JSON).write_text('{"layers": 3}')
    with pytest.raises(RunDirError, match="expected"):
        load_run(tmp_path)


def test_cli_bad_input_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from bitsmith.cli import app

    runner = CliRunner()
    for args in (["search", "--method", "nope", "--avg-bits", "4"],
                 ["search", "--model", "digits"],                      # no budget
                 ["search", "--avg-bits", "4", "--w-bits", "a,b"],
                 ["search", "--avg-bits", "4", "--schemes", "nosuch"],
                 ["search", "--latency-ms", "3"]):
        res = runner.invoke(app, args + ["--out", str(tmp_path)])
        assert res.exit_code == 2, (args, res.output)
    res = runner.invoke(app, ["search", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output


AUTOQNN_SCHEMES = (("binary", 1), ("ternary", 2), ("resq", 2), ("fixed_point", 4),
                   ("mu_l2q", 2), ("zoomq", 3), ("clipq", 4), ("pot", 4),
                   ("uniform_symmetric", 4))


def test_qss_over_the_autoqnn_schemes():
    ds = _data()
    space = SupernetSpace(weight=AUTOQNN_SCHEMES, act_bits=(4,), observer="minmax",
                        first_last="same")
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], space, _loader(ds))
    budget = Budget(avg_weight_bits=2.5)
    m = make_method("qss", net, budget, arch_data=ds, arch_batch_size=8, hard=True)
    res = train(net.model, _loader(ds), _cfg(max_steps=3), callbacks=[m])
    assert math.isfinite(res.final_loss)
    assert all(p.grad is None and torch.isfinite(p).all() for p in m.arch_parameters())
    d = derive_policy(m)
    assert d.cost.avg_weight_bits <= 2.5 + 1e-9
    assert {s.weight.scheme for s in d.policy.values()} <= {s for s, _ in AUTOQNN_SCHEMES}


def test_derivation_uses_the_relaxations_budget_share():
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    m = make_method("qss", net, Budget(avg_weight_bits=4.5))  # flat: E = mean(2,3,4,8)
    expected = float(net.expected_cost("avg_weight_bits", *m.probs()).detach())
    assert expected == pytest.approx(4.25, abs=1e-5)
    matched = derive_policy(m).cost.avg_weight_bits
    plain = derive_policy(m, match_expected=False).cost.avg_weight_bits
    assert 0.98 * expected - 1e-9 <= matched <= 4.5 + 1e-9
    assert plain <= matched


def test_latency_budget_from_a_lookup_table():
    ds = _data()
    model = randomize_bn(TinyNet())
    table_probe = build_supernet(model, ds.tensors[0][:4], SPACE, _loader(ds)).table

    def lut(name, spec):  # ms; any per-layer, per-precision table works
        return table_probe[name].macs * spec.weight.bits * spec.act.bits * 1e-6

    net = build_supernet(model, ds.tensors[0][:4], SPACE, _loader(ds), latency=lut)
    lo = net.const["latency"] + sum(float(c.min()) for c in net.costs["latency"])
    hi = net.const["latency"] + sum(float(c.max()) for c in net.costs["latency"])
    budget = Budget(latency=lo + 0.3 * (hi - lo))
    m = make_method("qpl", net, budget, mode="round", init_bits=8.0)
    train(net.model, _loader(ds), _cfg(max_steps=3), callbacks=[m])
    d = derive_policy(m, latency=lut)
    total = sum(lut(n, s) for n, s in d.policy.items())
    assert total <= budget.latency * (1 + 1e-9)
    with pytest.raises(InfeasibleBudgetError, match="latency"):
        make_method("qss", net, Budget(latency=0.9 * lo))


# -------------------------------------------------------------------- warm start
def _warm_policy(net):
    """A policy over every searched layer with a different weight candidate per layer."""
    from bitsmith.policy import Policy

    kw, ka = len(net.weight_specs), len(net.act_specs)
    return Policy({**dict(net.fixed), **{n: net.spec_of((i + 1) % kw, i % ka)
                                         for i, n in enumerate(net.names)}})


@pytest.mark.parametrize("method", ["qss", "ssps", "qpl"])
def test_warm_start_logits_start_at_the_policy(method):
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    pol = _warm_policy(net)
    m = make_method(method, net, Budget(avg_weight_bits=8.0), init_policy=pol,
                    init_strength=2.0)
    start = {n: pol[n] for n in net.names}
    assert {n: net.spec_of(k, j) for n, (k, j) in m.choices().items()} == start
    pw, pa = [p.detach() for p in m.probs()[0]], [p.detach() for p in m.probs()[1]]
    if method == "qpl":  # continuous bits start at the policy's widths
        bw, ba = [b.detach() for b in m.bits()[0]], [b.detach() for b in m.bits()[1]]
        for i, n in enumerate(net.names):
            assert float(bw[i]) == pytest.approx(pol[n].weight.bits, abs=0.01)
            assert float(ba[i]) == pytest.approx(pol[n].act.bits, abs=0.01)
    else:  # logit advantage s: p = e^s / (e^s + K - 1)
        for i in range(len(net.names)):
            assert float(pw[i].max()) == pytest.approx(math.exp(2) / (math.exp(2) + 3))
            assert float(pa[i].max()) == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    neutral = make_method(method, net, Budget(avg_weight_bits=8.0))
    if method != "qpl":
        assert all(float(p.detach().max()) == pytest.approx(0.25)
                   for p in neutral.probs()[0])


def test_warm_start_bad_policies_are_clear_errors():
    from bitsmith.policy import LayerSpec, Policy, QSpec

    ds = _data(16)
    space = SupernetSpace.uniform_bits((2, 3, 4), (4,), observer="minmax")  # first/last int8
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], space, _loader(ds))
    good = net.spec_of(0, 0)
    with pytest.raises(SupernetSpaceError, match="does not have.*nope"):
        make_method("ssps", net, Budget(avg_weight_bits=8.0),
                    init_policy=Policy({"nope": good}))
    off = LayerSpec(QSpec("uniform_symmetric", 5, "channel"), net.act_specs[0])
    with pytest.raises(SupernetSpaceError, match="not a candidate"):
        make_method("qss", net, Budget(avg_weight_bits=8.0),
                    init_policy=Policy({net.names[0]: off}))
    first = net.table.names[0]  # fixed at W8A8 by first_last="int8"
    with pytest.raises(SupernetSpaceError, match="fixed"):
        make_method("ssps", net, Budget(avg_weight_bits=8.0),
                    init_policy=Policy({first: good}))
    with pytest.raises(SupernetSpaceError, match="share='layer'"):
        make_method("qss", net, Budget(avg_weight_bits=8.0), share="model",
                    init_policy=Policy({net.names[0]: good}))
    with pytest.raises(ValueError, match="init_strength"):
        make_method("ssps", net, Budget(avg_weight_bits=8.0),
                    init_policy=Policy({net.names[0]: good}), init_strength=-1.0)
    # a partial policy is fine: unnamed layers keep the neutral start
    m = make_method("ssps", net, Budget(avg_weight_bits=8.0),
                    init_policy=Policy({net.names[0]: net.spec_of(2, 0)}))
    assert m.choices()[net.names[0]] == (2, 0) and set(m.init_choices) == {0}


@pytest.mark.parametrize("metric", ["fisher", "hessian", "measured_kl"])
def test_ilp_warm_start_meets_budget_and_seeds_run_search(metric):
    from bitsmith.search.warmstart import ilp_warm_start

    ds = _data(32)
    model = randomize_bn(TinyNet())
    net = build_supernet(model, ds.tensors[0][:4], SPACE, _loader(ds))
    budget = Budget(avg_weight_bits=3.5)
    alloc = ilp_warm_start(model, net, budget, DataLoader(ds, 64), metric=metric,
                           max_examples=32)  # the batches run_search uses for arch_data
    assert within_budget(estimate(net.table, alloc.policy), budget)
    assert set(alloc.policy) == set(net.table.names)
    st = SearchConfig(method="ssps", budget=budget, space=SPACE, search=_cfg(max_steps=2),
                      qat=_cfg(max_steps=1), warm_start=metric, warm_start_strength=3.0,
                      warm_start_examples=32, method_kw={"threshold": 0.99}, run_qat=False)
    o = search(model, _loader(ds), ds, config=st, train_data=_loader(ds)).details
    assert o.warm_start == alloc.policy
    assert o.method.init_choices and o.summary()["warm_start"]
    with pytest.raises(ValueError, match="warm_start 'nope'"):
        search(model, _loader(ds), ds, train_data=_loader(ds), config=SearchConfig(
            method="ssps", budget=budget, space=SPACE, search=_cfg(max_steps=1),
            warm_start="nope", run_qat=False))


def test_two_sided_derivation_fills_the_budget():
    ds = _data(16)
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], SPACE, _loader(ds))
    budget = Budget(avg_weight_bits=6.0)
    from bitsmith.policy import Policy

    # probabilities lean to 2 bits (E ~ 3.6 < B): the arg-max would leave budget unused
    cheap = Policy({n: net.spec_of(0, 0) for n in net.names})
    m = make_method("ssps", net, budget, init_policy=cheap)
    bits = derive_policy(m).cost.avg_weight_bits
    assert 0.98 * 6.0 - 1e-9 <= bits <= 6.0 + 1e-9
    one = make_method("ssps", net, budget, two_sided=False, init_policy=cheap)
    assert derive_policy(one).cost.avg_weight_bits < 0.98 * 6.0


def test_cli_warm_start_bad_value_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from bitsmith.cli import app

    res = CliRunner().invoke(app, ["search", "--model", "digits", "--avg-bits", "3",
                                   "--warm-start", "nosuch", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "warm-start" in res.output


# ------------------------------------------------------------------ uniform baseline
def test_uniform_within_budget_takes_the_dearest_feasible_uniform_pair():
    from bitsmith.search import uniform_within_budget
    from bitsmith.search.supernet import layer_spec_table

    ds = _data()
    space = SupernetSpace.uniform_bits((2, 3, 4, 8), (4, 8), observer="minmax")  # first/last W8A8
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], space, _loader(ds))
    k3, j4 = [s.bits for s in net.weight_specs].index(3), [s.bits for s in net.act_specs].index(4)
    w3a4 = Policy(layer_spec_table(net, {n: (k3, j4) for n in net.names}))
    budget = Budget(bitops=estimate(net.table, w3a4).bitops)
    pol = uniform_within_budget(net, budget)
    # W3A4 uses the whole BitOPs budget; W4A4 and W2A8 would exceed it, W2A4 leaves a third.
    assert pol == w3a4
    for name, spec in net.fixed.items():  # fixed layers stay as in the search
        assert pol[name] == spec
    assert within_budget(estimate(net.table, pol), budget)
    # An activation-memory limit below the 8-bit inputs rules the A8 pairs out.
    a4_bytes = max(float(net.act_bytes[i][j4]) for i in range(len(net.names)))
    big = Budget(avg_weight_bits=8.0)
    pol = uniform_within_budget(net, big)
    assert {(pol[n].weight.bits, pol[n].act.bits) for n in net.names} == {(8, 8)}
    pol = uniform_within_budget(net, big, act_budget_bytes=a4_bytes)
    assert {pol[n].act.bits for n in net.names} == {4}
    assert {pol[n].weight.bits for n in net.names} == {8}
    # Below the cheapest uniform pair (but above the cheapest mixed policy's floor): None.
    w2a4 = Policy(layer_spec_table(net, {n: (0, j4) for n in net.names}))
    assert uniform_within_budget(net, Budget(bitops=0.99 * estimate(net.table, w2a4).bitops)) \
        is None


def test_run_search_uniform_baseline_is_trained_and_reported(tmp_path):
    import warnings

    from bitsmith.rundir import load_run

    ds = _data()
    model = randomize_bn(TinyNet())
    space = SupernetSpace.uniform_bits((2, 3, 4), (4,), observer="minmax", first_last="same")
    st = SearchConfig(method="ssps", budget=Budget(avg_weight_bits=3.0), space=space,
                      search=_cfg(max_steps=3), qat=_cfg(max_steps=2),
                      method_kw={"threshold": 0.3}, uniform_baseline=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the baseline may win on noise
        o = search(model, _loader(ds), ds, config=st, out_dir=tmp_path,
                   train_data=_loader(ds)).details
    b = o.baseline
    assert b["label"] == "uniform_symmetric:3/ch / a4"  # 3 bits is the dearest within 3.0 avg
    assert {b["policy"][n].weight.bits for n in o.net.names} == {3}
    assert b["avg_weight_bits"] <= 3.0 + 1e-9 and 0.0 <= b["accuracy"] <= 100.0
    assert b["qmodel"] is not o.qmodel and b["qat_seconds"] > 0
    summary = o.summary()["uniform_baseline"]
    assert summary["accuracy"] == b["accuracy"] and "qmodel" not in summary
    trials = {t["name"]: t for t in load_run(tmp_path).trials}
    assert trials["uniform-baseline"]["source"] == "baseline:uniform"
    assert trials["uniform-baseline"]["accuracy"] == pytest.approx(b["accuracy"])
    assert (tmp_path / "ckpt" / f"qat-baseline-{b['policy'].fingerprint()[:12]}").is_dir()


def test_uniform_baseline_warns_when_it_beats_the_searched_policy(tmp_path):
    ds = _data()
    space = SupernetSpace.uniform_bits((2, 3, 4), (4,), observer="minmax", first_last="same")
    st = SearchConfig(method="ssps", budget=Budget(avg_weight_bits=3.0), space=space,
                      search=_cfg(max_steps=2), qat=_cfg(max_steps=1),
                      method_kw={"threshold": 0.3}, uniform_baseline=True)
    calls = iter([50.0, 10.0, 90.0])  # the user's metric scores FP32, searched, baseline

    def metric(model):
        return next(calls)

    with pytest.warns(RuntimeWarning, match=r"uniform policy .* scored 90.00 % vs 10.00 %"):
        o = search(randomize_bn(TinyNet()), _loader(ds), ds, evaluate=metric, config=st,
                   train_data=_loader(ds)).details
    assert o.baseline["accuracy"] == 90.0


def test_uniform_baseline_none_when_no_uniform_pair_fits():
    ds = _data()
    space = SupernetSpace.uniform_bits((2, 4), (4,), observer="minmax", first_last="same")
    net = build_supernet(randomize_bn(TinyNet()), ds.tensors[0][:4], space, _loader(ds))
    from bitsmith.search import uniform_within_budget

    lo = net.const["size_bytes"] + sum(float(c.min()) for c in net.costs["size_bytes"])
    # Just above the all-2-bit policy: feasible for a mixed policy and for uniform W2 ...
    assert uniform_within_budget(net, Budget(size_bytes=lo * 1.001)) is not None
    # ... but an avg-bits budget of 1.5 is below every uniform pair (and every policy).
    assert uniform_within_budget(net, Budget(avg_weight_bits=1.5)) is None


def test_cli_uniform_baseline_prints_both_and_records_the_trial(tmp_path):
    from typer.testing import CliRunner

    from bitsmith.cli import app
    from bitsmith.rundir import load_run

    res = CliRunner().invoke(app, ["search", "--model", "digits", "--avg-bits", "4",
                                   "--search-steps", "2", "--qat-steps", "2",
                                   "--uniform-baseline", "--no-progress", "--threads", "1",
                                   "--out", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    trial = {t["name"]: t for t in load_run(tmp_path).trials}["uniform-baseline"]
    assert f"{trial['accuracy']:.2f} %" in res.output
    assert "uniform baseline uniform_symmetric:3/ch / a4 within the same budget" in res.output
