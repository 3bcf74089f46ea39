"""Calibration statistics (TensorStats) and range observers (compute_range)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitsmith.calibrate import TensorStats, compute_range
from bitsmith.calibrate.observers import METHODS


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qerr(x: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    """Mean squared error of the uniform grid bitsmith.schemes.uniform builds from (lo, hi)."""
    x = x.double()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax
        return float(((x - torch.clamp(torch.round(x / scale), -qmax, qmax) * scale) ** 2).mean())
    qmax = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax
    zp = min(max(round(-lo / scale), 0), qmax)
    q = torch.clamp(torch.round(x / scale) + zp, 0, qmax)
    return float(((x - (q - zp) * scale) ** 2).mean())


def _growing_batches(seed: int = 0) -> list[torch.Tensor]:
    """Batches whose range grows 1x .. 8x, so the histogram must widen while streaming."""
    g = _gen(seed)
    return [torch.randn(20_000, generator=g) * (1 + k) + 0.1 * k for k in range(8)]


# --------------------------------------------------------------------------- streaming
def test_streaming_keeps_exact_minmax_counts_and_every_batch_in_the_histogram() -> None:
    batches = _growing_batches()
    stats = TensorStats()
    for b in batches:
        stats.update(b)
    data = torch.cat(batches)
    assert stats.count == data.numel() and stats.batches == len(batches)
    assert stats.min.item() == data.min().item() and stats.max.item() == data.max().item()
    assert stats.min.shape == () and stats.min.dtype == torch.float32

    counts, edges = stats.histogram()
    assert counts.shape == (2048,) and edges.shape == (2049,)
    assert counts.sum().item() == data.numel()           # no element lost while re-binning
    assert edges[0] <= data.min() and edges[-1] >= data.max()
    # Re-binning is exact: the streamed histogram is the histogram of all the data on the
    # final grid, up to float32 rounding of values within an ulp of a bin edge.
    ref, _ = np.histogram(data.double().numpy(), bins=edges.numpy())
    assert np.abs(counts.numpy() - ref).sum() <= 1e-3 * data.numel()
    # 0 is a bin edge (the |x| histogram is an exact fold).
    assert torch.any(edges == 0) or edges[0] > 0 or edges[-1] < 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_streaming_ranges_match_one_shot(symmetric: bool) -> None:
    batches = _growing_batches(1)
    stream = TensorStats()
    for b in batches:
        stream.update(b)
    whole = TensorStats.of(torch.cat(batches))
    width = float(stream.histogram()[1].diff()[0])     # the (coarser) streamed bin width
    for bits in (4, 8):
        for method, tol in (("minmax", 0.0), ("percentile", 2 * width), ("mse", 0.02),
                            ("entropy", 0.05)):
            a = compute_range(stream, method, bits, symmetric=symmetric, per_channel=False)
            b = compute_range(whole, method, bits, symmetric=symmetric, per_channel=False)
            for u, v in zip(a, b, strict=True):
                if method in ("mse", "entropy"):     # relative to the data's max |x|
                    scale = float(whole.max.abs().clamp_min(whole.min.abs()))
                    assert abs(float(u) - float(v)) <= tol * scale, (method, bits, a, b)
                else:
                    assert abs(float(u) - float(v)) <= tol, (method, bits, a, b)


def test_merge_equals_streaming_everything_into_one() -> None:
    batches = _growing_batches(2)
    single, left, right = TensorStats(), TensorStats(), TensorStats()
    for i, b in enumerate(batches):
        single.update(b)
        (left if i % 2 else right).update(b)
    merged = left.merge(right)
    assert merged is left
    assert (merged.count, merged.batches) == (single.count, single.batches)
    assert merged.min.item() == single.min.item() and merged.max.item() == single.max.item()
    assert merged.histogram()[0].sum().item() == single.count
    width = float(merged.histogram()[1].diff()[0])
    for symmetric in (True, False):
        a = compute_range(merged, "percentile", 8, symmetric=symmetric, per_channel=False)
        b = compute_range(single, "percentile", 8, symmetric=symmetric, per_channel=False)
        assert all(abs(float(u) - float(v)) <= 2 * width for u, v in zip(a, b, strict=True))
    # merging into an empty TensorStats copies, merging an empty one changes nothing
    empty = TensorStats().merge(single)
    assert empty.count == single.count and empty.histogram()[0].sum().item() == single.count
    before = single.count
    single.merge(TensorStats())
    assert single.count == before


# --------------------------------------------------------------------------- percentile
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(p: float) -> None:
    x = torch.randn(200_000, generator=_gen(3)) * 2.0 + 0.5
    stats = TensorStats()
    for part in x.split(50_000):
        stats.update(part)
    width = float(stats.histogram()[1].diff()[0])
    lo, hi = compute_range(stats, "percentile", 8, symmetric=True, per_channel=False,
                           percentile=p)
    want = np.percentile(x.abs().numpy(), p)
    assert abs(hi.item() - want) <= width and lo.item() == -hi.item()
    lo, hi = compute_range(stats, "percentile", 8, symmetric=False, per_channel=False,
                           percentile=p)
    want_lo, want_hi = np.percentile(x.numpy(), [100 - p, p])
    assert abs(lo.item() - want_lo) <= width and abs(hi.item() - want_hi) <= width


def test_percentile_100_is_minmax() -> None:
    x = torch.randn(10_000, generator=_gen(4))
    stats = TensorStats.of(x)
    lo, hi = compute_range(stats, "percentile", 8, symmetric=False, per_channel=False,
                           percentile=100.0)
    assert lo.item() == x.min().item() and hi.item() == x.max().item()


# --------------------------------------------------------------------------- mse
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dist", ["laplace", "student_t"])
def test_mse_beats_minmax_on_heavy_tails(symmetric: bool, dist: str) -> None:
    torch.manual_seed(5)
    if dist == "laplace":
        x = torch.distributions.Laplace(0.2, 1.0).sample((100_000,))
    else:
        x = torch.distributions.StudentT(3.0).sample((100_000,))
    stats = TensorStats()
    for part in x.split(25_000):
        stats.update(part)
    errors = {}
    for method in METHODS:
        lo, hi = compute_range(stats, method, 4, symmetric=symmetric, per_channel=False)
        errors[method] = _qerr(x, lo.item(), hi.item(), 4, symmetric)
    lo, hi = compute_range(stats, "mse", 4, symmetric=symmetric, per_channel=False)
    assert hi.item() < 0.7 * x.max().item() and lo.item() > 0.7 * x.min().item()  # clipped
    assert errors["mse"] < 0.5 * errors["minmax"]
    # it minimises the real quantizer's error, so no other observer does better
    assert errors["mse"] <= 1.01 * min(errors.values())


def test_one_pass_serves_every_bit_width() -> None:
    torch.manual_seed(6)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    stats = TensorStats()
    for part in x.split(20_000):
        stats.update(part)
    del x, part                                   # the data is gone: only statistics remain
    amax = max(-stats.min.item(), stats.max.item())
    for symmetric in (True, False):
        his = [compute_range(stats, "mse", b, symmetric=symmetric, per_channel=False)[1].item()
               for b in range(2, 9)]
        assert all(a <= b for a, b in zip(his, his[1:], strict=False)), his  # more bits: clip less
        assert his[0] < 0.5 * his[-1] and his[-1] <= amax
        ent = [compute_range(stats, "entropy", b, symmetric=symmetric, per_channel=False)[1]
               .item() for b in range(2, 9)]
        assert all(0 < t <= amax for t in ent)
        assert ent[-1] > ent[0]
    assert stats.batches == 5


# --------------------------------------------------------------------------- entropy
def _with_outliers(relu: bool) -> torch.Tensor:
    g = _gen(7)
    bulk = torch.randn(200_000, generator=g)
    outliers = torch.empty(20).uniform_(20, 50, generator=g)
    if relu:
        return torch.cat([bulk.relu(), outliers])
    sign = torch.where(torch.rand(20, generator=g) < 0.5, -1.0, 1.0)
    return torch.cat([bulk, outliers * sign])


def test_entropy_clips_a_few_huge_outliers() -> None:
    x = _with_outliers(relu=False)
    stats = TensorStats.of(x)
    lo, hi = compute_range(stats, "entropy", 8, symmetric=True, per_channel=False)
    amax = x.abs().max().item()
    assert lo.item() == -hi.item()
    assert 4.0 < hi.item() < 0.75 * amax          # keeps the Gaussian bulk, drops the outliers
    bulk = x[x.abs() < 5]                          # finer steps for the bulk than min/max gives
    assert _qerr(bulk, lo.item(), hi.item(), 8, True) < 0.5 * _qerr(bulk, -amax, amax, 8, True)


def test_entropy_one_sided_relu_data() -> None:
    x = _with_outliers(relu=True)
    stats = TensorStats.of(x)
    lo, hi = compute_range(stats, "entropy", 8, symmetric=False, per_channel=False)
    assert lo.item() == 0.0                        # one-sided: the low end is the observed min
    assert 3.7 < hi.item() < 0.75 * x.max().item()


# --------------------------------------------------------------------------- per channel
@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_shapes_and_channel_scales(axis: int) -> None:
    scales = torch.tensor([0.1, 1.0, 10.0, 100.0])
    x = torch.randn(64, 4, 8, 8, generator=_gen(8)) * scales[:, None, None]
    if axis == -1:
        x = x.movedim(1, -1).contiguous()
    stats = TensorStats(channel_axis=axis, keep_channel_hist=True)
    for part in x.split(16):
        stats.update(part)
    assert stats.num_channels == 4 and stats.ch_min.shape == (4,)
    for method in METHODS:
        for symmetric in (True, False):
            lo, hi = compute_range(stats, method, 8, symmetric=symmetric, per_channel=True)
            assert lo.shape == (4,) and hi.shape == (4,) and lo.dtype == torch.float32
            assert torch.all(lo <= hi)
            ratio = hi[1:] / hi[:-1]                # each channel 10x the previous one
            assert torch.all((ratio > 5) & (ratio < 20)), (method, hi)
            lo_t, hi_t = compute_range(stats, method, 8, symmetric=symmetric, per_channel=False)
            assert lo_t.shape == () and hi_t.shape == ()


def test_per_channel_equals_per_tensor_on_each_channel() -> None:
    """The vectorised per-channel path gives what each channel alone gives."""
    w = torch.randn(6, 3, 5, 5, generator=_gen(9)) * torch.linspace(0.05, 1.0, 6)[:, None,
                                                                                    None, None]
    w[2] = w[2].abs()                               # one one-sided channel
    stats = TensorStats.of(w, channel_axis=0)
    for method in METHODS:
        for symmetric in (True, False):
            for bits in (3, 6):
                lo, hi = compute_range(stats, method, bits, symmetric=symmetric, per_channel=True)
                for c in range(6):
                    one = TensorStats.of(w[c])
                    lo_c, hi_c = compute_range(one, method, bits, symmetric=symmetric,
                                               per_channel=False)
                    assert torch.allclose(lo[c], lo_c, rtol=1e-5, atol=1e-7), (method, c)
                    assert torch.allclose(hi[c], hi_c, rtol=1e-5, atol=1e-7), (method, c)


def test_weight_stats_channel_axis_0() -> None:
    w = torch.randn(8, 16, generator=_gen(10)) * torch.arange(1, 9)[:, None]
    stats = TensorStats.of(w, channel_axis=0)
    assert torch.equal(stats.ch_max, w.amax(1)) and torch.equal(stats.ch_min, w.amin(1))
    lo, hi = compute_range(stats, "mse", 4, symmetric=True, per_channel=True)
    assert hi.shape == (8,) and torch.all(hi <= w.abs().amax(1) + 1e-6)
    assert torch.all(hi[1:] > hi[:-1] * 0.5)


# --------------------------------------------------------------------------- caching
def test_cache_returns_the_same_tensors_until_new_data() -> None:
    stats = TensorStats.of(torch.randn(5_000, generator=_gen(11)))
    first = compute_range(stats, "mse", 4, symmetric=True, per_channel=False)
    again = compute_range(stats, "mse", 4, symmetric=True, per_channel=False)
    assert again[0] is first[0] and again[1] is first[1]
    other = compute_range(stats, "mse", 6, symmetric=True, per_channel=False)
    assert other[1].item() != first[1].item()
    stats.update(torch.full((10,), 50.0))           # new data invalidates the cache
    fresh = compute_range(stats, "mse", 4, symmetric=True, per_channel=False)
    assert fresh[1] is not first[1]
    assert compute_range(stats, "minmax", 4, symmetric=True, per_channel=False)[1].item() == 50.0


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "inf")])
def test_non_finite_data_raises_and_leaves_stats_unchanged(bad: float, word: str) -> None:
    stats = TensorStats(channel_axis=1, keep_channel_hist=True)
    stats.update(torch.randn(4, 3))
    x = torch.randn(4, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=f"calibration data contains 1 {word}"):
        stats.update(x)
    assert stats.count == 12 and stats.batches == 1
    with pytest.raises(ValueError, match="NaN"):
        TensorStats.of(torch.tensor([1.0, float("nan")]))


def test_unknown_method_and_empty_stats_raise() -> None:
    stats = TensorStats.of(torch.randn(100))
    with pytest.raises(ValueError, match="unknown observer method 'kl'.*minmax.*mse"):
        compute_range(stats, "kl", 8, symmetric=True, per_channel=False)
    empty = TensorStats()
    assert empty.is_empty
    with pytest.raises(ValueError, match="no data was observed"):
        compute_range(empty, "minmax", 8, symmetric=True, per_channel=False)
    empty.update(torch.empty(0, 3))                # an empty batch is not data
    assert empty.is_empty


def test_per_channel_requests_need_channel_statistics() -> None:
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="channel_axis"):
        compute_range(TensorStats.of(x), "minmax", 8, symmetric=True, per_channel=True)
    stats = TensorStats(channel_axis=1)             # per-channel min/max, no channel histograms
    stats.update(x)
    assert compute_range(stats, "minmax", 8, symmetric=True, per_channel=True)[0].shape == (4,)
    with pytest.raises(ValueError, match="keep_channel_hist=True"):
        compute_range(stats, "percentile", 8, symmetric=True, per_channel=True)
    with pytest.raises(ValueError, match="earlier batches had 4"):
        stats.update(torch.randn(8, 5))


def test_of_rejects_a_tensor_modified_before_binning() -> None:
    w = torch.randn(16, 4)
    stats = TensorStats.of(w)
    compute_range(stats, "minmax", 8, symmetric=True, per_channel=False)  # needs no histogram
    w.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        compute_range(stats, "mse", 8, symmetric=True, per_channel=False)


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("value", [0.0, 3.0, -2.0])
def test_constant_data_gives_finite_ranges(value: float) -> None:
    stats = TensorStats(channel_axis=0, keep_channel_hist=True)
    stats.update(torch.full((2, 50), value))
    for method in METHODS:
        for symmetric in (True, False):
            for per_channel in (True, False):
                lo, hi = compute_range(stats, method, 4, symmetric=symmetric,
                                       per_channel=per_channel)
                assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
                assert torch.all(lo <= hi)
                assert torch.all(torch.maximum(lo.abs(), hi.abs()) <= abs(value) + 1e-6)
                if method == "minmax":
                    assert torch.all(lo == value) and torch.all(hi == value)


def test_quantizer_calibrates_through_this_package() -> None:
    """The Quantizer's calibration path (TensorStats.update + compute_range) end to end."""
    from bitsmith.graph.quantizer import Quantizer
    from bitsmith.policy import QSpec

    spec = QSpec(scheme="uniform_asymmetric", bits=4, granularity="channel", observer="mse")
    quant = Quantizer(spec, role="act", label="act")
    quant.start_calibration()
    x = torch.randn(32, 3, 6, 6, generator=_gen(12)).relu() * torch.tensor([1.0, 2.0, 4.0])[
        :, None, None]
    for part in x.split(8):
        assert quant(part) is part                 # pass-through while calibrating
    quant.finish_calibration()
    y = quant(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert ((y - x) ** 2).mean() < 0.05 * (x ** 2).mean()
