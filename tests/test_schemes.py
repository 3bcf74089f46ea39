"""Quantizer schemes: defining properties of every registered scheme, plus per-scheme checks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import PolicyError, QSpec
from bitsmith.schemes import available, get_scheme
from bitsmith.schemes import base as scheme_base
from bitsmith.schemes.base import Params, Scheme, reduce_dims, register
from bitsmith.schemes.binary import residual_binarize
from bitsmith.schemes.statistical import gaussian_optimal_step, gaussian_uniform_mse

EXPECTED = {
    "uniform_symmetric", "uniform_asymmetric", "binary", "ternary", "resq", "fixed_point",
    "mu_l2q", "zoomq", "clipq", "pot",
}
SHAPE = (6, 5, 4, 3)
GRANULARITIES = [("tensor", None), ("channel", 0), ("channel", 1), ("channel", -1)]


# --------------------------------------------------------------------------- helpers
def bit_samples(scheme: Scheme) -> list[int]:
    """A few bit widths of the scheme: both ends and two inside."""
    lo, hi = scheme.min_bits, scheme.max_bits
    return sorted({lo, min(lo + 1, hi), (lo + hi) // 2, hi})


def _cases() -> list:
    cases = []
    for name in available():
        scheme = get_scheme(name)
        for bits in bit_samples(scheme):
            for gran, axis in GRANULARITIES:
                if gran == "channel" and not scheme.per_channel:
                    continue
                tag = "t" if axis is None else f"ch{axis}"
                cases.append(pytest.param(name, bits, gran, axis, id=f"{name}-{bits}b-{tag}"))
    return cases


CASES = _cases()
SYMMETRIC_CASES = [c for c in CASES if get_scheme(c.values[0]).symmetric]
ASYMMETRIC_NAMES = [n for n in available() if not get_scheme(n).symmetric]
LEARNABLE_CASES = [c for c in CASES if get_scheme(c.values[0]).learnable_keys()]
GRID_CASES = [c for c in CASES if get_scheme(c.values[0]).integer_grid]


def sample(shape: tuple[int, ...] = SHAPE, offset: float = 0.0,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Gaussian data whose scale varies along dims 0 and 1 (so per-channel matters)."""
    x = torch.randn(shape, dtype=torch.float64)
    if len(shape) >= 2:
        rest = [1] * (len(shape) - 2)
        x = x * torch.linspace(0.5, 2.0, shape[0], dtype=torch.float64).reshape(-1, 1, *rest)
        x = x * torch.linspace(0.7, 1.5, shape[1], dtype=torch.float64).reshape(1, -1, *rest)
    return (x + offset).to(dtype)


def make_params(name: str, x: Tensor, bits: int, gran: str, axis: int | None,
                shrink: float = 1.0, **spec_kw) -> Params:
    """Parameters for ``x``: its min/max range (times ``shrink``) or its own statistics."""
    scheme = get_scheme(name)
    if scheme.range_based:
        dims = reduce_dims(x, axis)
        lo = x.detach().amin(dim=dims, keepdim=True) * shrink
        hi = x.detach().amax(dim=dims, keepdim=True) * shrink
        spec = QSpec(scheme=name, bits=bits, granularity=gran, **spec_kw)
        return scheme.params_from_range(lo, hi, bits, spec)
    return scheme.params_from_data(x, bits, axis)


def groups(t: Tensor, axis: int | None) -> list[Tensor]:
    """The elements of each quantization group, flattened."""
    if axis is None:
        return [t.reshape(-1)]
    moved = t.movedim(axis, 0)
    return [moved[i].reshape(-1) for i in range(moved.shape[0])]


def assert_close(a: Tensor, b: Tensor, rel: float = 1e-6) -> None:
    tol = rel * max(float(b.abs().max()), 1e-12)
    assert torch.allclose(a, b, rtol=0.0, atol=tol), float((a - b).abs().max())


# ------------------------------------------------------------------- registry basics
def test_all_autoqnn_candidates_registered():
    assert set(available()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_class_attributes_are_consistent(name):
    s = get_scheme(name)
    assert 1 <= s.min_bits <= s.max_bits <= 16
    assert s.float_params >= 0 and s.zero_point_bytes >= 0
    assert (s.range_based and hasattr(s, "params_from_range")) or not s.range_based
    for bits in range(s.min_bits, s.max_bits + 1):
        expected = bits if name == "resq" else s.float_params
        assert s.float_params_for(bits) == expected
    # Every scheme is usable through a QSpec at each of its ends.
    QSpec(scheme=name, bits=s.min_bits)
    QSpec(scheme=name, bits=s.max_bits, granularity="channel" if s.per_channel else "tensor")
    # Range-based schemes must refuse data-driven use and vice versa.
    x = torch.randn(4, 3)
    if s.range_based:
        with pytest.raises(NotImplementedError):
            s.params_from_data(x, s.min_bits, None)
    else:
        with pytest.raises(NotImplementedError):
            s.params_from_range(x.min(), x.max(), s.min_bits, QSpec(scheme=name, bits=s.min_bits))


def test_register_rejects_duplicates_and_nameless():
    class Dup(Scheme):
        name = "binary"

        def quantize(self, x, params, bits):
            return x

    class Nameless(Scheme):
        def quantize(self, x, params, bits):
            return x

    with pytest.raises(ValueError, match="already registered"):
        register(Dup)
    with pytest.raises(TypeError, match="name"):
        register(Nameless)


# ----------------------------------------------------------- properties of all schemes
@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_at_most_2_pow_bits_values_per_group(name, bits, gran, axis):
    x = sample()
    out = get_scheme(name).quantize(x, make_params(name, x, bits, gran, axis), bits)
    for g in groups(out, axis):
        assert g.unique().numel() <= 2 ** bits


@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_idempotent(name, bits, gran, axis):
    scheme = get_scheme(name)
    x = sample(offset=0.3)
    params = make_params(name, x, bits, gran, axis)
    once = scheme.quantize(x, params, bits)
    assert_close(scheme.quantize(once, params, bits), once)


@pytest.mark.parametrize("name, bits, gran, axis", SYMMETRIC_CASES)
def test_symmetric_schemes_are_odd(name, bits, gran, axis):
    scheme = get_scheme(name)
    x = sample(offset=0.3)
    params = make_params(name, x, bits, gran, axis)
    assert_close(scheme.quantize(-x, params, bits), -scheme.quantize(x, params, bits))
    if not scheme.range_based:  # data-driven: parameters of -x equal those of x
        for key, value in make_params(name, -x, bits, gran, axis).items():
            assert_close(value, params[key])


@pytest.mark.parametrize("name", ASYMMETRIC_NAMES)
def test_asymmetric_flag_is_honest(name):
    scheme = get_scheme(name)
    bits = max(scheme.min_bits, 3)
    x = sample(offset=0.8)
    params = make_params(name, x, bits, "tensor", None)
    diff = scheme.quantize(-x, params, bits) + scheme.quantize(x, params, bits)
    assert diff.abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_shape_and_dtype_preserved(name, bits, gran, axis, dtype):
    x = sample(dtype=dtype)
    out = get_scheme(name).quantize(x, make_params(name, x, bits, gran, axis), bits)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_half_input_with_float32_params(name, dtype):
    """As in a half-precision model: float32 range parameters, half activations."""
    scheme = get_scheme(name)
    bits = min(max(4, scheme.min_bits), scheme.max_bits)
    for x in (sample().to(dtype), torch.zeros(SHAPE, dtype=dtype)):
        x.requires_grad_(True)
        params = make_params(name, x.float(), bits, "channel", 1)
        if not scheme.range_based:
            params = scheme.params_from_data(x, bits, 1)
        out = scheme.quantize(x, params, bits)
        assert out.dtype == dtype and torch.isfinite(out).all()
        out.float().sum().backward()
        assert torch.isfinite(x.grad).all()
        ref = scheme.quantize(x.detach().float(), make_params(name, x.detach().float(), bits,
                                                            "channel", 1), bits)
        # Same quantizer up to half-precision rounding (which may flip a few elements a level).
        assert (out.float() - ref).abs().mean() <= 0.05 * ref.abs().mean() + 1e-6


@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_all_zero_tensor_gives_zeros_and_finite_gradients(name, bits, gran, axis):
    scheme = get_scheme(name)
    x = torch.zeros(SHAPE, requires_grad=True)
    out = scheme.quantize(x, make_params(name, x, bits, gran, axis), bits)
    assert not torch.isnan(out).any()
    assert out.abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_straight_through_gradient(name, bits, gran, axis):
    """With the parameters held fixed, the gradient to x is the STE's: identity (0 if clipped)."""
    scheme = get_scheme(name)
    x = sample().requires_grad_(True)
    params = {k: v.detach() for k, v in make_params(name, x, bits, gran, axis).items()}
    weight = torch.rand(SHAPE) + 0.5
    # 0.9 x: no element sits exactly on a min/max clipping bound (autograd splits ties).
    (scheme.quantize(0.9 * x, params, bits) * weight).sum().backward()
    x.grad /= 0.9
    assert torch.isfinite(x.grad).all()
    passed = x.grad != 0
    # Many elements get a gradient, also those on the end levels (1-bit asymmetric
    # uniform clips about half of the data: its grid is {0, s} or {-s, 0}).
    assert passed.float().mean() > 0.3
    if name == "binary":  # alpha * clipped identity (see test_binary_gradient_is_xnor_net)
        expected = params["alpha"] * weight * (0.9 * x.detach().abs() <= 1)
    else:
        expected = weight * passed
    assert torch.allclose(x.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, bits, gran, axis", CASES)
def test_gradient_reaches_input(name, bits, gran, axis):
    """Full gradient, including the path through data-driven parameters."""
    scheme = get_scheme(name)
    x = sample().requires_grad_(True)
    out = scheme.quantize(x, make_params(name, x, bits, gran, axis), bits)
    weight = torch.randn(SHAPE)
    (out * weight).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.3


@pytest.mark.parametrize("name, bits, gran, axis", LEARNABLE_CASES)
def test_learnable_parameters_get_gradient(name, bits, gran, axis):
    scheme = get_scheme(name)
    x = sample(offset=0.3)
    # A range narrower than the data, so that clipping happens (PACT / LSQ+ offset terms).
    params = make_params(name, x, bits, gran, axis, shrink=0.5)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()
              if k in scheme.learnable_keys()}
    out = scheme.quantize(x, {**params, **leaves}, bits)
    ((out - x) ** 2).sum().backward()
    for key, leaf in leaves.items():
        assert leaf.grad is not None, key
        assert torch.isfinite(leaf.grad).all(), key
        assert leaf.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name, bits, gran, axis", GRID_CASES)
def test_integer_grid_matches_output(name, bits, gran, axis):
    scheme = get_scheme(name)
    x = sample(offset=0.3, dtype=torch.float64)  # float32 cannot tell 16-bit codes apart
    params = make_params(name, x, bits, gran, axis)
    out = scheme.quantize(x, params, bits)
    scale, zero_point, qmin, qmax = scheme.grid(params, bits)
    assert qmax - qmin + 1 <= 2 ** bits
    q = out / scale + zero_point
    assert torch.allclose(q, q.round(), atol=1e-3)
    assert q.round().min() >= qmin and q.round().max() <= qmax
    assert torch.equal(zero_point, zero_point.round())


# ------------------------------------------------------------------------ QSpec errors
@pytest.mark.parametrize("name, bits, needle", [
    ("binary", 2, "bits=1,"),
    ("ternary", 1, "bits=2,"),
    ("ternary", 3, "bits=2,"),
    ("pot", 1, "bits=2..8"),
    ("fixed_point", 9, "bits=2..8"),
    ("mu_l2q", 9, "bits=1..8"),
    ("clipq", 1, "bits=2..8"),
])
def test_unsupported_bits_raise_policy_error(name, bits, needle):
    with pytest.raises(PolicyError, match=f"supports {needle}"):
        QSpec(scheme=name, bits=bits)


def test_unknown_scheme_lists_available_names():
    with pytest.raises(PolicyError) as err:
        QSpec(scheme="zoom_q", bits=4)
    message = str(err.value)
    assert "unknown quantization scheme 'zoom_q'" in message
    for name in EXPECTED:
        assert name in message


def test_channel_granularity_without_per_channel_form_raises(monkeypatch):
    class TensorOnly(Scheme):
        name = "tensor_only"
        per_channel = False

        def quantize(self, x, params, bits):
            return x

    monkeypatch.setitem(scheme_base._REGISTRY, "tensor_only", TensorOnly())
    assert QSpec(scheme="tensor_only", granularity="tensor").scheme == "tensor_only"
    with pytest.raises(PolicyError, match="no per-channel form"):
        QSpec(scheme="tensor_only", granularity="channel")


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if not get_scheme(n).integer_grid])
def test_pow2_scale_needs_integer_grid(name):
    s = get_scheme(name)
    with pytest.raises(PolicyError, match="integer-grid"):
        QSpec(scheme=name, bits=s.min_bits, pow2_scale=True)


# ------------------------------------------------------------------ scheme specifics
@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_binary_values_are_plus_minus_mean_abs(gran, axis):
    s = get_scheme("binary")
    x = sample()
    out = s.quantize(x, s.params_from_data(x, 1, axis), 1)
    for gx, gq in zip(groups(x, axis), groups(out, axis), strict=True):
        alpha = gx.abs().mean()
        assert torch.allclose(gq.abs(), alpha.expand_as(gq))
        assert torch.equal(torch.sign(gq), torch.sign(gx))


def test_binary_gradient_is_xnor_net():
    s = get_scheme("binary")
    x = (sample() * 0.8).requires_grad_(True)
    w = torch.randn(SHAPE)
    (s.quantize(x, s.params_from_data(x, 1, None), 1) * w).sum().backward()
    xd = x.detach()
    alpha, sign = xd.abs().mean(), torch.sign(xd)
    expected = alpha * w * (xd.abs() <= 1) + sign * (w * sign).sum() / xd.numel()
    assert torch.allclose(x.grad, expected, atol=1e-6)


@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_ternary_twn(gran, axis):
    s = get_scheme("ternary")
    x = torch.randn(SHAPE)
    out = s.quantize(x, s.params_from_data(x, 2, axis), 2)
    for gx, gq in zip(groups(x, axis), groups(out, axis), strict=True):
        values = gq.unique()
        assert values.numel() <= 3 and (values == 0).any()
        delta = 0.7 * gx.abs().mean()
        big = gx.abs() > delta
        alpha = gx.abs()[big].mean()
        assert torch.equal(gq == 0, ~big)
        assert torch.allclose(gq[big], alpha * torch.sign(gx[big]))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_fixed_point_scale_is_a_covering_power_of_two(bits, gran, axis):
    s = get_scheme("fixed_point")
    x = sample()
    params = make_params("fixed_point", x, bits, gran, axis)
    scale = params["scale"]
    log2 = torch.log2(scale)
    assert torch.equal(log2, log2.round())
    qmax = 2 ** (bits - 1) - 1
    amax = x.abs().amax(dim=reduce_dims(x, axis), keepdim=True)
    assert (scale * qmax >= amax).all() and (scale * qmax < 2 * amax).all()
    err = (s.quantize(x, params, bits) - x).abs()
    assert (err <= scale / 2 + 1e-6).all()  # the whole range is covered: no clipping


def test_mu_l2q_steps_match_max_1960():
    max_table = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881}
    for bits, step in max_table.items():
        assert round(gaussian_optimal_step(bits), 2) == round(step, 2)
        assert abs(gaussian_optimal_step(bits) - step) < 2e-3
    for bits in range(1, 9):
        step = gaussian_optimal_step(bits)
        best = gaussian_uniform_mse(step, bits)
        assert best <= gaussian_uniform_mse(step * 1.02, bits)
        assert best <= gaussian_uniform_mse(step * 0.98, bits)
    # Max's optimum distortions for 1..3 bits.
    for bits, mse in {1: 0.3634, 2: 0.1188, 3: 0.03744}.items():
        best = gaussian_uniform_mse(gaussian_optimal_step(bits), bits)
        assert best == pytest.approx(mse, rel=2e-3)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_mu_l2q_levels_and_empirical_error(bits):
    s = get_scheme("mu_l2q")
    x = torch.randn(200_000, dtype=torch.float64) * 3.0 + 1.5
    params = s.params_from_data(x, bits, None)
    out = s.quantize(x, params, bits)
    step = gaussian_optimal_step(bits)
    k = (out - params["mu"]) / params["sigma"] / step - 0.5
    assert torch.allclose(k, k.round(), atol=1e-6)
    assert k.round().min() >= -(2 ** (bits - 1)) and k.round().max() <= 2 ** (bits - 1) - 1
    rel_mse = float(((out - x) ** 2).mean() / x.var())
    assert rel_mse == pytest.approx(gaussian_uniform_mse(step, bits), rel=0.03)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_pot_levels_are_powers_of_two(bits, gran, axis):
    s = get_scheme("pot")
    x = sample()
    params = make_params("pot", x, bits, gran, axis)
    out = s.quantize(x, params, bits)
    alpha = params["alpha"].expand_as(x)
    j_max = 2 ** (bits - 1) - 2
    nz = out != 0
    exps = torch.log2(out[nz].abs() / alpha[nz])
    assert torch.allclose(exps, exps.round(), atol=1e-6)
    assert exps.round().min() >= -j_max and exps.round().max() <= 0
    assert torch.equal(torch.sign(out[nz]), torch.sign(x[nz]))
    # Below half the smallest level -> 0; at or above it -> nonzero.
    small = x.abs() < alpha * 2.0 ** (-j_max - 1)
    assert torch.equal(~nz, small)
    for g in groups(out, axis):
        assert g.unique().numel() <= 2 ** bits - 1


def test_pot_rounds_in_log_domain():
    s = get_scheme("pot")
    alpha = torch.ones(1)
    x = torch.tensor([1.0, 0.72, 0.70, 0.36, 0.34, 0.2, 0.07, 0.06, 3.0])
    out = s.quantize(x, {"alpha": alpha}, 3)  # levels 0, 1/4, 1/2, 1
    # 2^-0.5 = 0.707, 2^-1.5 = 0.354; zero below 1/8.
    assert out.tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_resq_codebook_and_error_decreases_with_bases(gran, axis):
    s = get_scheme("resq")
    x = sample(shape=(8, 6, 16, 16))
    errors = []
    for bits in range(1, 9):
        params = s.params_from_data(x, bits, axis)
        out = s.quantize(x, params, bits)
        _, greedy = residual_binarize(x, bits, axis)
        for g in groups(out, axis):
            assert g.unique().numel() <= 2 ** bits
        mse = float(((out - x) ** 2).mean())
        assert mse <= float(((greedy - x) ** 2).mean()) + 1e-9  # never worse than greedy
        errors.append(mse)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors


def test_resq_values_are_signed_sums_of_the_bases():
    s = get_scheme("resq")
    x = torch.randn(500)
    bits = 3
    params = s.params_from_data(x, bits, None)
    alphas = torch.stack([params[f"alpha{i}"].reshape(()) for i in range(bits)])
    signs = torch.tensor([[1.0 if (c >> i) & 1 else -1.0 for i in range(bits)]
                          for c in range(2 ** bits)])
    codebook = signs @ alphas
    out = s.quantize(x, params, bits)
    dist = (out[:, None] - codebook[None, :]).abs()
    assert (dist.min(dim=1).values < 1e-6).all()
    # ... and each element got the nearest of them.
    best = (x[:, None] - codebook[None, :]).abs().min(dim=1).values
    assert torch.allclose((out - x).abs(), best, atol=1e-6)
    # One base is exactly binary (no zeros in x).
    one = s.quantize(x, s.params_from_data(x, 1, None), 1)
    binary = get_scheme("binary")
    assert torch.allclose(one, binary.quantize(x, binary.params_from_data(x, 1, None), 1))


def test_resq_greedy_alphas():
    x = torch.randn(1000)
    alphas, greedy = residual_binarize(x, 3, None)
    r = x.clone()
    for a in alphas:
        assert torch.allclose(a.reshape(()), r.abs().mean())
        r = r - a * torch.where(r >= 0, 1.0, -1.0)
    assert torch.allclose(greedy, x - r, atol=1e-6)


@pytest.mark.parametrize("name", ["uniform_symmetric", "uniform_asymmetric", "fixed_point",
                                  "clipq"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_uniform_error_at_most_half_step_inside_range(name, bits, gran, axis):
    s = get_scheme(name)
    x = sample(offset=0.3)
    params = make_params(name, x, bits, gran, axis)
    if name == "clipq":
        step = params["alpha"] / params["qmax"]
    else:
        step = params["scale"]
    err = (s.quantize(x, params, bits) - x).abs()
    assert (err <= step / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
@pytest.mark.parametrize("gran, axis", GRANULARITIES)
def test_zoomq_keeps_extremes_and_half_step_error(bits, gran, axis):
    s = get_scheme("zoomq")
    x = sample(offset=0.7)
    params = s.params_from_data(x, bits, axis)
    out = s.quantize(x, params, bits)
    for gx, gq in zip(groups(x, axis), groups(out, axis), strict=True):
        assert torch.isclose(gq.min(), gx.min()) and torch.isclose(gq.max(), gx.max())
        step = (gx.max() - gx.min()) / (2 ** bits - 1)
        assert ((gq - gx).abs() <= step / 2 + 1e-6).all()


def test_zoomq_constant_tensor_is_exact():
    s = get_scheme("zoomq")
    x = torch.full((3, 4), 0.37)
    assert torch.equal(s.quantize(x, s.params_from_data(x, 2, None), 2), x)
    m = get_scheme("mu_l2q")
    assert torch.allclose(m.quantize(x, m.params_from_data(x, 2, 0), 2), x)


def test_clipq_pact_gradients():
    s = get_scheme("clipq")
    bits, qmax = 4, 7
    x = torch.linspace(-3.0, 3.0, 101).requires_grad_(True)
    alpha = torch.tensor([1.3], requires_grad=True)
    out = s.quantize(x, {"alpha": alpha, "qmax": torch.tensor([float(qmax)])}, bits)
    out.sum().backward()
    xd = x.detach()
    inside = xd.abs() <= 1.3
    assert torch.equal(x.grad, inside.float())  # identity inside, zero where clipped
    v = xd[inside] * qmax / 1.3
    expected = torch.sign(xd[~inside]).sum() + ((v.round() - v) / qmax).sum()
    assert alpha.grad.item() == pytest.approx(expected.item(), abs=1e-4)


def test_clipq_pow2_scale_and_reduced_range():
    s = get_scheme("clipq")
    lo, hi = torch.tensor([-0.9]), torch.tensor([0.5])
    p = s.params_from_range(lo, hi, 4, QSpec(scheme="clipq", bits=4, pow2_scale=True))
    step = p["alpha"] / p["qmax"]
    assert torch.equal(torch.log2(step), torch.log2(step).round())
    assert (p["alpha"] >= 0.9).all()
    p = s.params_from_range(lo, hi, 4, QSpec(scheme="clipq", bits=4, reduced_range=True))
    assert p["qmax"].item() == 3


@pytest.mark.parametrize("name", ["uniform_symmetric", "fixed_point", "clipq"])
def test_two_bits_reduced_range_stays_finite(name):
    s = get_scheme(name)
    spec = QSpec(scheme=name, bits=2, reduced_range=True)
    for amax in (0.0, 1.0):
        lo, hi = torch.tensor([-amax]), torch.tensor([amax])
        params = s.params_from_range(lo, hi, 2, spec)
        assert all(torch.isfinite(v).all() for v in params.values())
        out = s.quantize(torch.tensor([-0.8, 0.1, 0.9]) * amax, params, 2)
        assert torch.isfinite(out).all()
        if amax:
            assert out.abs().max() > 0


# -------------------------------------------------------- through the Quantizer module
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_weight_quantizer_runs_every_scheme(name, gran):
    s = get_scheme(name)
    bits = min(max(3, s.min_bits), s.max_bits)
    quantizer = Quantizer(QSpec(scheme=name, bits=bits, granularity=gran), role="weight")
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    out = quantizer(w)
    assert out.shape == w.shape and torch.isfinite(out).all()
    for g in groups(out.detach(), 0 if gran == "channel" else None):
        assert g.unique().numel() <= 2 ** bits
    out.square().sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_learnable_clipq_alpha_trains_through_quantizer():
    quantizer = Quantizer(QSpec(scheme="clipq", bits=3, learnable=True), role="weight")
    quantizer.train()
    w = torch.randn(8, 3, 3, 3)
    out = quantizer(w)
    assert isinstance(quantizer.p_alpha, torch.nn.Parameter)
    ((out - 0.5 * w) ** 2).sum().backward()
    grad = quantizer.p_alpha.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
