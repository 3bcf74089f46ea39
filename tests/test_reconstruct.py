"""Learned rounding by reconstruction (AdaRound, BRECQ, QDrop): math, blocks, determinism,
cache, resume, exact export, the Policy fields and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import QSpec
from bitsmith.graph.quantizer import FrozenWeightQuantizer, Quantizer
from bitsmith.policy import LayerSpec, Policy, PolicyError, Rounding, build_policy
from bitsmith.quantize import CalibrationError
from bitsmith.reconstruct import ReconstructionCache
from bitsmith.reconstruct.blocks import block_groups, layer_groups
from bitsmith.reconstruct.softround import (
    SoftRounding,
    WeightGrid,
    annealed_beta,
    rectified_sigmoid,
    rounding_regularizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

W3 = QSpec("uniform_symmetric", 3, "channel")
A8 = QSpec("uniform_asymmetric", 8)
FAST = {"iterations": 30, "batch_size": 8}


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class TinyResNet(nn.Module):
    """stem conv+relu, two residual blocks, pooled linear head (traceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = Block(8)
        self.block2 = Block(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def resnet() -> nn.Module:
    return TinyResNet().eval()


@pytest.fixture
def data() -> torch.Tensor:
    return torch.randn(32, 3, 8, 8)


def _names(model: nn.Module, x: torch.Tensor) -> list[str]:
    return bitsmith.prepare(model, x[:1])[1].names


def _policy(model, x, method="adaround", weight=W3, act=A8, **kw) -> Policy:
    return build_policy(_names(model, x), weight, act, rounding=Rounding(method, **{**FAST, **kw}))


# ------------------------------------------------------------------ soft rounding
def test_regularizer_is_zero_at_hard_values_and_largest_at_half():
    h = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert float(rounding_regularizer(h, 2.0)) == 0.0
    half = torch.full((4,), 0.5)
    assert float(rounding_regularizer(half, 20.0)) == pytest.approx(4.0)
    mid = torch.tensor([0.3])  # large beta: only values near 0.5 are pushed
    assert rounding_regularizer(mid, 20.0) > rounding_regularizer(mid, 2.0)
    v = torch.tensor([-10.0, 0.0, 10.0])
    assert rectified_sigmoid(v).tolist() == [0.0, pytest.approx(0.5), 1.0]


def test_beta_is_off_during_warmup_then_anneals_from_start_to_end():
    assert annealed_beta(0, 100, 0.2, 20.0, 2.0) is None
    assert annealed_beta(19, 100, 0.2, 20.0, 2.0) is None
    assert annealed_beta(20, 100, 0.2, 20.0, 2.0) == pytest.approx(20.0)
    betas = [annealed_beta(i, 100, 0.2, 20.0, 2.0) for i in range(20, 100)]
    assert all(a >= b for a, b in zip(betas, betas[1:])) and betas[-1] == pytest.approx(2.0, 0.01)


@pytest.mark.parametrize("spec", [
    QSpec("uniform_symmetric", 3, "channel", observer="mse"),
    QSpec("uniform_symmetric", 4, "tensor"),
    QSpec("uniform_asymmetric", 2, "channel"),
    QSpec("fixed_point", 4, "channel"),
    QSpec("clipq", 3, "tensor"),
])
def test_soft_rounding_starts_at_the_weight_and_hardens_to_the_scheme_grid(spec):
    w = torch.randn(6, 4, 3, 3) * 0.1
    q = Quantizer(spec, "weight", 0)
    grid = WeightGrid.of(q, w)
    soft = SoftRounding(w, grid)
    inside = (grid.nearest(w) > grid.qmin) & (grid.nearest(w) < grid.qmax)
    assert torch.allclose(soft()[inside], w[inside], atol=1e-6)  # unclipped: soft = float
    # V starts at the fractional part, so the hard weight is round-to-nearest, bit for bit
    assert torch.equal(soft.hard_weight(), q(w))
    with torch.no_grad():
        soft.v.fill_(10.0)  # every weight rounds up
    up = soft.hard_weight()
    assert torch.all(up >= q(w) - 1e-7) and not torch.equal(up, q(w))
    assert torch.equal(q.scheme.quantize(up, q.params(), spec.bits), up)  # still on the grid


def test_grid_refuses_a_non_uniform_scheme():
    with pytest.raises(ValueError, match="no uniform integer grid"):
        WeightGrid.of(Quantizer(QSpec("binary", 1), "weight", 0), torch.randn(4, 4))


# ------------------------------------------------------------------ blocks
def test_block_detection_finds_stem_residual_blocks_and_head(resnet, data):
    work, table, _ = bitsmith.prepare(resnet, data[:1])
    modules = dict(work.named_modules())
    blocks = block_groups(work.graph, modules, table.names)
    targets = [[str(n.target) for n in work.graph.nodes if n.name in g and n.op ==
                "call_module"] for g in blocks]
    assert targets == [["stem"], ["block1.conv1", "block1.conv2"],
                       ["block2.conv1", "block2.conv2"], ["fc"]]
    # the residual add and the block's closing ReLU belong to the block
    assert any("add" in n for n in blocks[1]) and blocks[1][-1].startswith("relu")
    layers = layer_groups(work.graph, modules, table.names)
    assert len(layers) == 6 and len(layers[0]) == 2     # stem + its ReLU
    assert len(layers[2]) == 1                          # conv2 feeds the add, no ReLU


def test_plain_chain_blocks_are_single_layers(tiny_net, images):
    work, table, _ = bitsmith.prepare(tiny_net, images[:1])
    groups = block_groups(work.graph, dict(work.named_modules()), table.names)
    assert len(groups) == len(table.names)


# ------------------------------------------------------------------ reconstruction
@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop"])
def test_reconstruction_lowers_the_unit_losses_and_only_moves_codes(method, resnet, data):
    policy = _policy(resnet, data, method, iterations=150)
    q = bitsmith.quantize(resnet, policy, calibration=data)
    rep = q.bitsmith.reconstruction
    assert rep.method == method and rep.samples == 32 and rep.seconds > 0
    assert sorted(rep.layers) == sorted(policy)
    expected_units = 6 if method == "adaround" else 4
    assert len(rep.units) == expected_units
    assert sum(u.loss_after for u in rep.units) < sum(u.loss_before for u in rep.units)
    nearest = bitsmith.quantize(resnet, policy.with_options(rounding="nearest"), calibration=data)
    for name, layer in bitsmith.graph.quantized_layers(q).items():
        assert isinstance(layer.weight_quantizer, FrozenWeightQuantizer)
        wq = layer.weight_quantizer
        grid = wq.scheme.grid(wq.params(), wq.spec.bits)
        codes = layer.weight / grid[0]
        assert torch.equal(codes, torch.round(codes))            # on the same grid
        ref = bitsmith.graph.quantized_layers(nearest)[name]
        ref_weight = ref.quantized_weight()  # also fits the reference quantizer
        assert torch.equal(wq.params()["scale"], ref.weight_quantizer.params()["scale"])
        step = (layer.weight - ref_weight).detach().abs() / grid[0]
        assert float(step.max()) <= 1.0 + 1e-4                   # at most one step away


def test_learned_activation_steps_change_and_stay_positive(resnet, data):
    policy = _policy(resnet, data, "qdrop", act=QSpec("uniform_asymmetric", 4), iterations=60,
                     act_lr=1e-2)
    assert policy.rounding.learn_act  # QDrop's default
    q = bitsmith.quantize(resnet, policy, calibration=data)
    plain = bitsmith.quantize(resnet, policy.with_options(rounding="nearest"), calibration=data)
    s = bitsmith.graph.quantized_layers(q)["block1.conv2"].input_quantizer.params()["scale"]
    s0 = bitsmith.graph.quantized_layers(plain)["block1.conv2"].input_quantizer.params()["scale"]
    assert not torch.equal(s, s0) and float(s.min()) > 0


def test_fisher_weights_are_at_least_one_and_change_the_result(resnet, data):
    from bitsmith.reconstruct.engine import _fisher_weights

    policy = _policy(resnet, data, "brecq", fisher=True)
    q = bitsmith.quantize(resnet, policy, calibration=data)
    plain = bitsmith.quantize(resnet, policy.with_options(
        rounding=policy.rounding.replace(fisher=False)), calibration=data)
    assert len(q.bitsmith.reconstruction.units) == 4
    assert any(not torch.equal(a, b) for a, b in zip(q.state_dict().values(),
                                                      plain.state_dict().values()))
    work = bitsmith.quantize(resnet, policy.with_options(rounding="nearest"), calibration=data)
    fp = bitsmith.prepare(resnet, data[:1])[0]
    node = next(n.name for n in work.graph.nodes if n.op == "call_function")  # the first add
    w = _fisher_weights(work, fp, [data], [node])[node]
    assert w.shape[0] == len(data) and float(w.min()) >= 1.0 and float(w.max()) > 1.0


def test_deterministic_for_a_seed(resnet, data):
    policy = _policy(resnet, data, "qdrop")
    a = bitsmith.quantize(resnet, policy, calibration=data).state_dict()
    b = bitsmith.quantize(resnet, policy, calibration=data).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cache_reuses_finished_units(tmp_path, resnet, data):
    policy = _policy(resnet, data, "brecq")
    first = bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path)
    assert first.bitsmith.reconstruction.cached_units == 0
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    again = bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path)
    rep = again.bitsmith.reconstruction
    assert rep.cached_units == len(rep.units) == 4
    a, b = _weights(first), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another spec for the last layer: only the head is recomputed (blocks are upstream)
    changed = policy.with_layers({"fc": LayerSpec(QSpec("uniform_symmetric", 4, "channel"), A8)})
    rep = bitsmith.quantize(resnet, changed, calibration=data, cache=tmp_path) \
        .bitsmith.reconstruction
    assert [u.cached for u in rep.units] == [True, True, True, False]
    # other calibration data: nothing is reused
    other = bitsmith.quantize(resnet, policy, calibration=data + 0.1, cache=tmp_path)
    assert other.bitsmith.reconstruction.cached_units == 0


def test_float_inputs_make_units_independent(tmp_path, resnet, data):
    policy = _policy(resnet, data, "adaround", inputs="float")
    bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path)
    first = policy.with_layers({"stem": LayerSpec(QSpec("uniform_symmetric", 4, "channel"), A8)})
    rep = bitsmith.quantize(resnet, first, calibration=data, cache=tmp_path) \
        .bitsmith.reconstruction
    assert [u.cached for u in rep.units] == [False] + [True] * 5


def test_resume_after_a_kill_repeats_no_finished_unit(tmp_path, resnet, data):
    policy = _policy(resnet, data, "adaround")

    def kill_after_two(record, index, total):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path,
                          progress=kill_after_two)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no partial file
    resumed = bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path)
    assert [u.cached for u in resumed.bitsmith.reconstruction.units] == [True, True] + [False] * 4
    fresh = bitsmith.quantize(resnet, policy, calibration=data)
    a, b = _weights(resumed), _weights(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_cache_file_is_recomputed(tmp_path, resnet, data):
    policy = _policy(resnet, data, "brecq")
    bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path)
    victim = sorted(tmp_path.glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    rep = bitsmith.quantize(resnet, policy, calibration=data, cache=tmp_path) \
        .bitsmith.reconstruction
    assert rep.cached_units == 3
    assert ReconstructionCache(tmp_path).load(victim.stem) is not None  # rewritten


def test_untraceable_model_is_reconstructed_layer_by_layer(data):
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if float(x.sum()) > 1e9:  # data-dependent control flow: fx cannot trace it
                return x
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    model = Untraceable().eval()
    with pytest.warns(Warning):
        policy = _policy(model, data, "brecq")
    with pytest.warns(Warning):
        q = bitsmith.quantize(model, policy, calibration=data)
    rep = q.bitsmith.reconstruction
    assert not rep.traced and [u.name for u in rep.units] == ["conv", "fc"]


# ------------------------------------------------------------------ export
def test_packed_and_onnx_exports_reproduce_a_reconstructed_model(tmp_path, resnet, data):
    from bitsmith.export import export_onnx, load_packed, save_packed
    from bitsmith.export.qparams import weight_qparams

    policy = _policy(resnet, data, "qdrop", weight=QSpec("uniform_symmetric", 4, "channel"))
    q = bitsmith.quantize(resnet, policy, calibration=data)
    save_packed(q, tmp_path / "m.safetensors", example_inputs=data[:1])
    loaded = load_packed(tmp_path / "m.safetensors", TinyResNet())
    test = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(test), q(test))
    assert loaded.bitsmith.policy == policy
    report = export_onnx(q, tmp_path / "m.onnx", data[:1], calibration=[data])
    assert report.integer_layers == len(policy) and report.float_layers == 0
    for layer in bitsmith.graph.quantized_layers(q).values():
        w = weight_qparams(layer)  # None unless scale · q reproduces the weight bit for bit
        assert w is not None
        assert torch.equal(torch.from_numpy(w.q.astype("float32")) *
                           torch.from_numpy(w.scale).reshape(-1, 1, 1, 1)
                           if w.q.ndim == 4 else torch.from_numpy(w.q.astype("float32")) *
                           torch.from_numpy(w.scale).reshape(-1, 1), layer.weight)


# ------------------------------------------------------------------ policy
def test_policy_round_trip_fingerprint_and_old_files(tmp_path):
    names = ["a", "b"]
    plain = build_policy(names, W3, A8)
    assert "rounding" not in plain.to_dict() and plain.rounding == Rounding()
    learned = build_policy(names, W3, A8, rounding=Rounding("brecq", iterations=500, seed=3,
                                                            fisher=True),
                           bias_correction=True, calib_size=256)
    assert learned.fingerprint() != plain.fingerprint()
    for suffix in (".json", ".yaml"):
        again = Policy.load(learned.save(tmp_path / f"p{suffix}"))
        assert again == learned and again.fingerprint() == learned.fingerprint()
        assert again.rounding.learn_act and again.rounding.iterations == 500
    assert learned.with_options(rounding="qdrop").rounding.method == "qdrop"
    assert learned.with_layers({"a": LayerSpec(W3, A8)}).options() == learned.options()
    assert Policy.from_dict({"layers": {"a": None}, "rounding": "adaround"}).rounding.learned
    assert "rounding: brecq 500it +act" in learned.table()


@pytest.mark.parametrize("data, needle", [
    ({"rounding": "magic"}, "rounding.method='magic' is unknown"),
    ({"rounding": {"method": "adaround", "iterations": 0}}, "rounding.iterations=0"),
    ({"rounding": {"method": "qdrop", "drop_prob": 1.5}}, "rounding.drop_prob=1.5"),
    ({"rounding": {"method": "adaround", "inputs": "both"}}, "rounding.inputs='both'"),
    ({"rounding": {"method": "adaround", "beta_start": 1, "beta_end": 2}}, "rounding.beta_end"),
    ({"rounding": {"method": "adaround", "speed": 2}}, "unknown rounding field"),
    ({"rounding": [1]}, "expected a method name or a mapping"),
    ({"bias_correction": "yes"}, "bias_correction='yes' must be true or false"),
    ({"calib_size": 0}, "calib_size=0 must be a positive integer"),
])
def test_bad_model_wide_fields_are_clear_errors(data, needle):
    with pytest.raises(PolicyError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        Policy.from_dict({"layers": {"a": {"weight": W3.to_dict(), "act": None}}, **data})


def test_learned_rounding_refuses_non_uniform_weight_schemes():
    with pytest.raises(PolicyError, match=r"b\.weight: rounding='adaround'.*'ternary'"):
        Policy({"a": LayerSpec(W3, A8), "b": LayerSpec(QSpec("ternary", 2), A8)},
               rounding="adaround")
    ok = Policy({"b": LayerSpec(QSpec("ternary", 2), A8)})
    with pytest.raises(PolicyError, match="ternary"):
        ok.with_options(rounding="qdrop")
    blocks = LayerSpec(QSpec("uniform_symmetric", 4, "block32"), A8)
    with pytest.raises(PolicyError, match=r"a\.weight: .*granularity='block32'"):
        Policy({"a": blocks}, rounding="brecq")


def test_learned_rounding_needs_the_calibration_inputs(resnet, data):
    policy = _policy(resnet, data, "adaround")
    stats = bitsmith.collect_stats(resnet, data)
    with pytest.raises(CalibrationError, match="keep_inputs=True"):
        bitsmith.quantize(resnet, policy, calibration=stats)
    kept = bitsmith.collect_stats(resnet, data, keep_inputs=True)
    a = bitsmith.quantize(resnet, policy, calibration=kept)
    b = bitsmith.quantize(resnet, policy, calibration=data)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_calib_size_uses_the_first_inputs_and_checks_statistics(resnet, data):
    policy = build_policy(_names(resnet, data), W3, A8, calib_size=10)
    batches = [data[:8], data[8:16], data[16:]]
    a = bitsmith.quantize(resnet, policy, calibration=batches)
    b = bitsmith.quantize(resnet, policy.with_options(calib_size=None), calibration=data[:10])
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(CalibrationError, match="samples=10"):
        bitsmith.quantize(resnet, policy, calibration=bitsmith.collect_stats(resnet, data))
    stats = bitsmith.collect_stats(resnet, batches, samples=10)
    assert stats.samples == 10
    with torch.no_grad():
        assert torch.equal(bitsmith.quantize(resnet, policy, calibration=stats)(x), a(x))


def test_bias_correction_in_the_policy_rebuilds_the_tuned_model():
    from conftest import tune_problem

    from bitsmith.tune import TorchEvaluator, TuneSpace

    model, calib, val = tune_problem()
    space = TuneSpace(scheme=("symmetric",), act_clip=("minmax",), granularity=("channel",),
                        calib_size=(40,), float_layers=("none",), weight_bits=(3,),
                        bias_correction=(True,))
    evaluator = TorchEvaluator(model, calib, val, space, batch_size=16)
    config = {k: v[0] for k, v in space.dimensions(evaluator.layer_names).items()}
    tuned = evaluator.quantized_model(config)
    policy = Policy.from_yaml(evaluator.policy(config).to_yaml())  # as saved to a file
    assert policy.bias_correction and policy.calib_size == 40
    rebuilt = bitsmith.quantize(model, policy, calibration=evaluator.calibration_data(40))
    without = bitsmith.quantize(model, policy.with_options(bias_correction=False),
                                calibration=evaluator.calibration_data(40))
    x = val[0]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), tuned(x))
        assert not torch.equal(without(x), tuned(x))
    m = evaluator.evaluate(config)
    with torch.no_grad():
        acc = 100.0 * float((rebuilt(x).argmax(1) == val[1]).float().mean())
    assert m.accuracy == pytest.approx(acc)
