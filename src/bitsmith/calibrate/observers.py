"""Range observers: turn :class:`TensorStats` into a clipping range ``(lo, hi)``.

:func:`compute_range` is the one entry point. Every method works per tensor
and per channel (vectorised over channels) and reads only the statistics, so
one calibration pass serves every bit width, scheme and observer; results are
cached inside the statistics.

Methods (``x`` the observed values, ``b`` the bit width):

``"minmax"``
    ``(min x, max x)``.
``"percentile"``
    symmetric: ``t = P_p(|x|)``, range ``(-t, t)``; asymmetric:
    ``(P_{100-p}(x), P_p(x))``; ``P`` read off the histogram's CDF with linear
    interpolation inside a bin, clamped to the observed min/max.
``"entropy"``
    KL-divergence calibration (TensorRT, Migacz 2017; ONNX Runtime's entropy
    calibrator) on the histogram of ``|x|``: the threshold ``t`` minimising
    ``KL(P || Q)``, ``P`` the histogram clipped at ``t`` (outliers added to the
    last kept bin) and ``Q`` the kept bins merged into as many levels as the
    grid has on ``[0, t]`` and spread back. Levels: ``2**(b-1)`` for
    symmetric grids; for asymmetric grids ``2**b`` when the data is one-sided
    (``min >= 0``, e.g. after ReLU, or ``max <= 0``) and ``2**(b-1)`` when it
    is two-sided, the two-sided range being ``(max(-t, min), min(t, max))``.
``"mse"``
    the range minimising the expected squared quantization error (clipping
    plus rounding) of the actual integer grid (symmetric: ``s = t / (2**(b-1)-1)``;
    asymmetric: ``s = (hi - lo) / (2**b - 1)`` with a rounded zero point, as
    in :mod:`bitsmith.schemes.uniform`) under the histogram's piecewise-uniform
    density, integrated exactly bin by bin; searched over ``grid`` clip
    ratios of the max (then refined ten times finer around the best).
    Asymmetric: both ends scaled together, then each end alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bitsmith.calibrate.stats import TensorStats, _f64, _Hist

METHODS = ("minmax", "percentile", "entropy", "mse")

_ELEMS = 1 << 20         # elements of the (groups x candidates x cells) tensors per step
_FINE = 21               # points of the mse refinement grid, spanning +-1 coarse step
_EXACT_CELLS = 1024      # mse: exact rounding error up to this many grid cells (10 bits)


def compute_range(stats: TensorStats, method: str, bits: int, *, symmetric: bool,
                  per_channel: bool, percentile: float = 99.99,
                  grid: int = 100) -> tuple[Tensor, Tensor]:
    """Clipping range of the observed tensor for one observer, bit width and grid.

    Args:
        stats: the tensor's statistics.
        method: one of :data:`METHODS` (``"minmax"``, ``"percentile"``,
            ``"entropy"``, ``"mse"``).
        bits: bit width of the integer grid (used by ``"entropy"`` and ``"mse"``).
        symmetric: the grid is symmetric about 0 (``lo = -hi``) rather than
            an asymmetric grid with a zero point.
        per_channel: one range per channel along ``stats.channel_axis``.
        percentile: for ``"percentile"``, the percent of the mass kept, in (0, 100].
        grid: for ``"mse"``, number of candidate clip ratios ``k / grid`` of the max.

    Returns:
        ``(lo, hi)``: float32 tensors of shape ``()`` (per tensor) or ``(C,)``
        (per channel), in the units of the data, on the device of the
        statistics. ``lo <= hi``. Symmetric methods other than ``"minmax"``
        return ``lo = -hi``; ``"minmax"`` returns the observed extremes (a
        symmetric scheme uses ``max(|lo|, |hi|)``). The tensors are cached in
        ``stats`` and returned again on a repeated call: do not modify them
        in place.

    Raises:
        ValueError: unknown method, no data observed, bad ``bits`` /
            ``percentile`` / ``grid``, or per-channel ranges asked of statistics
            kept without a channel axis or per-channel histograms.
    """
    if method not in METHODS:
        raise ValueError(f"unknown observer method {method!r}; available: {', '.join(METHODS)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in 1..32, got {bits!r}")
    if stats.is_empty:
        raise ValueError(
            "no data was observed: the TensorStats is empty, so no range can be computed "
            "(did the calibration data reach this tensor?)"
        )
    if per_channel and stats.channel_axis is None:
        raise ValueError("per_channel=True needs statistics gathered with a channel_axis")
    if method == "percentile" and not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile} must be in (0, 100]")
    if method == "mse" and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    if method in ("entropy", "mse") and symmetric and bits < 2:
        raise ValueError("a symmetric grid needs bits >= 2")

    key = (method,
           bits if method in ("entropy", "mse") else None,
           bool(symmetric) if method != "minmax" else None,
           bool(per_channel),
           float(percentile) if method == "percentile" else None,
           grid if method == "mse" else None)
    cached = stats._cache.get(key)
    if cached is not None:
        return cached

    mn, mx = (stats.ch_min, stats.ch_max) if per_channel else (stats.min, stats.max)
    assert mn is not None and mx is not None  # the statistics are not empty (checked above)
    out_device = mn.device
    if method == "minmax":
        lo, hi = mn.clone(), mx.clone()
    else:
        hist = stats._hist_for(per_channel)
        mn64 = _f64(mn, hist.device).reshape(-1)
        mx64 = _f64(mx, hist.device).reshape(-1)
        if method == "percentile":
            lo, hi = _percentile_range(hist, mn64, mx64, float(percentile), symmetric)
        elif method == "entropy":
            lo, hi = _entropy_range(hist, mn64, mx64, bits, symmetric)
        else:
            lo, hi = _mse_range(hist, mn64, mx64, bits, symmetric, grid)
    lo = lo.float().to(out_device)
    hi = hi.float().to(out_device)
    if not per_channel:
        lo, hi = lo.reshape(()), hi.reshape(())
    stats._cache[key] = (lo, hi)
    return lo, hi


# --------------------------------------------------------------------------
# percentile
# --------------------------------------------------------------------------
def _quantile(hist: _Hist, q: float) -> Tensor:
    """``(G,)`` value below which a fraction ``q`` of each group's mass lies (linear in a bin)."""
    counts = hist.counts
    bins = counts.shape[1]
    cum = torch.nn.functional.pad(counts.cumsum(1), (1, 0))
    target = (q * cum[:, -1]).contiguous()
    j = torch.searchsorted(cum.contiguous(), target[:, None]).squeeze(1)   # cum[j-1] < t <= cum[j]
    b = (j - 1).clamp(0, bins - 1)
    inside = counts.gather(1, b[:, None]).squeeze(1)
    frac = ((target - cum.gather(1, b[:, None]).squeeze(1)) / inside.clamp_min(1e-300))
    return (hist.k0 + b + frac.clamp(0, 1)) * hist.w


def _percentile_range(hist: _Hist, mn: Tensor, mx: Tensor, p: float,
                      symmetric: bool) -> tuple[Tensor, Tensor]:
    if symmetric:
        amax = torch.maximum(mn.abs(), mx.abs())
        t = torch.minimum(_quantile(hist.abs_from_zero(), p / 100.0), amax)
        return -t, t
    a = _quantile(hist, (100.0 - p) / 100.0)
    b = _quantile(hist, p / 100.0)
    lo = torch.minimum(a, b).clamp(min=mn, max=mx)
    hi = torch.maximum(a, b).clamp(min=mn, max=mx)
    return lo, hi


# --------------------------------------------------------------------------
# entropy (KL divergence)
# --------------------------------------------------------------------------
def _kl_divergence(h: Tensor, cand: Tensor, levels: int) -> Tensor:
    """``KL(P_i || Q_i)`` for ``i`` leading bins kept; ``h`` ``(g, B)``, ``cand`` ``(g, K)``.

    ``P_i``: the first ``i`` bins, the mass beyond added to bin ``i-1``.
    ``Q_i``: those bins (without the outliers) merged into ``levels`` runs of
    ``floor(k i / levels)`` boundaries, each run's mass spread evenly over its
    bins where ``P_i`` is non-zero (TensorRT / ONNX Runtime). Closed form from
    prefix sums, ``O(levels)`` per candidate; ``inf`` where ``Q`` misses mass
    of ``P``. Requires ``levels <= i <= B``.
    """
    g, k = cand.shape
    total = h.sum(1, keepdim=True)                                        # N, (g, 1)
    cs = torch.nn.functional.pad(h.cumsum(1), (1, 0))                     # (g, B+1)
    nz = torch.nn.functional.pad((h > 0).double().cumsum(1), (1, 0))
    hlogh = torch.where(h > 0, h * torch.log(h.clamp_min(1e-300)), torch.zeros_like(h))
    lh = torch.nn.functional.pad(hlogh.cumsum(1), (1, 0))
    kept = cs.gather(1, cand)                                             # S_i
    out = total - kept                                                    # outliers O_i
    last = h.gather(1, cand - 1)
    p_last = (last + out) / total
    # sum_j p_j log p_j over P_i
    p_side = ((lh.gather(1, cand - 1) - cs.gather(1, cand - 1) * torch.log(total)) / total
              + torch.where(p_last > 0, p_last * torch.log(p_last.clamp_min(1e-300)), 0.0))
    steps = torch.arange(levels + 1, device=h.device)
    bounds = torch.div(cand[..., None] * steps, levels, rounding_mode="floor").view(g, -1)
    csb = cs.gather(1, bounds).view(g, k, levels + 1)
    nzb = nz.gather(1, bounds).view(g, k, levels + 1)
    run_sum = csb[..., 1:] - csb[..., :-1]                                # (g, K, L)
    run_nz = nzb[..., 1:] - nzb[..., :-1]
    run_nz[..., -1] += ((last == 0) & (out > 0)).double()
    p_run = run_sum.clone()
    p_run[..., -1] += out
    q = run_sum / (run_nz * kept[..., None]).clamp_min(1e-300)
    cross = torch.where(p_run > 0, p_run / total[..., None] * torch.log(q),
                        torch.zeros_like(q)).sum(-1)
    kl = torch.nan_to_num(p_side - cross, nan=float("inf"))
    return torch.where(kept > 0, kl, torch.full_like(kl, float("inf")))


def _kl_best_bins(counts: Tensor, levels: int) -> Tensor:
    """``(G,)`` number ``i`` of leading bins to keep, minimising ``KL(P_i || Q_i)``.

    ``counts``: ``(G, B)`` histogram of ``|x|`` from 0. Candidates are
    ``i = levels .. n`` with ``n`` the last occupied bin + 1 (groups with
    ``n <= levels`` keep all). Every candidate is tried when that costs at most
    ``2**24`` terms (always per tensor at 8 bits); otherwise (many channels)
    every ``s``-th candidate, then all within ``s`` of the best.
    """
    groups, bins = counts.shape
    dev = counts.device
    pos = torch.arange(1, bins + 1, dtype=torch.float64, device=dev)
    n_used = (pos * (counts > 0)).amax(1).long()
    best = n_used.clone()
    todo = torch.nonzero(n_used > levels).squeeze(1)
    if levels >= bins or todo.numel() == 0:
        return best.double()
    top = int(n_used[todo].max())                  # no candidate beyond the last occupied bin
    n_cand = top - levels + 1
    stride = 1
    if todo.numel() * n_cand * (levels + 1) > (1 << 24):
        stride = max(1, -(-n_cand // 128))
    coarse = torch.arange(levels, top + 1, stride, device=dev)
    chunk = max(1, _ELEMS // (coarse.numel() * (levels + 1)))
    for start in range(0, todo.numel(), chunk):
        rows = todo[start:start + chunk]
        h, limit = counts[rows].clone(), n_used[rows, None]
        h[:, 0] = h[:, 1]     # flatten the spike of exact zeros (ReLU, padding), as in NVIDIA's
        #                       pytorch-quantization, so that it does not dominate the divergence
        cand = torch.minimum(coarse.expand(rows.numel(), -1), limit)
        kl = _kl_divergence(h, cand, levels)
        pick = cand.gather(1, kl.argmin(1, keepdim=True))
        if stride > 1:
            near = torch.arange(-stride + 1, stride, device=dev)
            cand = (pick + near).clamp(min=levels).minimum(limit)
            kl = _kl_divergence(h, cand, levels)
            pick = cand.gather(1, kl.argmin(1, keepdim=True))
        best[rows] = pick.squeeze(1)
    return best.double()


def _entropy_range(hist: _Hist, mn: Tensor, mx: Tensor, bits: int,
                   symmetric: bool) -> tuple[Tensor, Tensor]:
    folded = hist.abs_from_zero()
    amax = torch.maximum(mn.abs(), mx.abs())
    if symmetric:
        t = torch.minimum(_kl_best_bins(folded.counts, 2 ** (bits - 1)) * folded.w, amax)
        return -t, t
    one_sided = (mn >= 0) | (mx <= 0)
    t = amax.clone()
    for levels, rows in ((2 ** bits, one_sided), (2 ** (bits - 1), ~one_sided)):
        idx = torch.nonzero(rows).squeeze(1)
        if idx.numel():
            t[idx] = _kl_best_bins(folded.counts[idx], levels) * folded.w[idx]
    t = torch.minimum(t, amax)
    return torch.maximum(-t, mn), torch.minimum(t, mx)


# --------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------
class _Moments:
    """Cumulative moments ``M_p(x) = sum over values < x of v**p`` (``p = 0, 1, 2``) of
    ``g`` histograms read as piecewise-uniform densities (exact within a bin).

    ``counts`` ``(g, B)``; bin ``j`` covers ``[e0 + j w, e0 + (j+1) w)``
    (``e0``, ``w``: ``(g,)``, float64).
    """

    def __init__(self, counts: Tensor, e0: Tensor, w: Tensor) -> None:
        bins = counts.shape[1]
        j = torch.arange(bins + 1, dtype=torch.float64, device=counts.device)
        edges = e0[:, None] + j * w[:, None]
        el, er = edges[:, :-1], edges[:, 1:]
        pad = torch.nn.functional.pad
        self.c, self.e0, self.w, self.bins = counts, e0[:, None], w[:, None], bins
        self.p0 = pad(counts.cumsum(1), (1, 0))
        self.p1 = pad((counts * (el + er) / 2).cumsum(1), (1, 0))
        self.p2 = pad((counts * (el * el + el * er + er * er) / 3).cumsum(1), (1, 0))
        self.t0, self.t1, self.t2 = self.p0[:, -1:], self.p1[:, -1:], self.p2[:, -1:]

    def take(self, rows: Tensor) -> _Moments:
        """The moments of the groups ``rows`` only."""
        out = _Moments.__new__(_Moments)
        out.bins = self.bins
        for name in ("c", "e0", "w", "p0", "p1", "p2", "t0", "t1", "t2"):
            setattr(out, name, getattr(self, name)[rows])
        return out

    def at(self, x: Tensor, second: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``M_0, M_1, M_2`` at ``x`` (``(g, ...)``), each shaped like ``x``
        (``M_2`` is ``None`` unless ``second``)."""
        shape = x.shape
        x = x.reshape(shape[0], -1)
        j = torch.floor((x - self.e0) / self.w).clamp_(0, self.bins - 1)
        xc = torch.minimum(torch.maximum(x, self.e0), self.e0 + self.bins * self.w)
        ej = self.e0 + j * self.w
        j = j.long()
        d = xc - ej
        dens = self.c.gather(1, j) / self.w
        m0 = self.p0.gather(1, j) + dens * d
        m1 = self.p1.gather(1, j) + dens * d * (xc + ej) / 2
        if not second:
            return m0.view(shape), m1.view(shape), None
        m2 = self.p2.gather(1, j) + dens * d * (xc * xc + xc * ej + ej * ej) / 3
        return m0.view(shape), m1.view(shape), m2.view(shape)

    def grid_error(self, scale: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
        """Expected summed squared error of ``x -> scale * clamp(round(x/scale), qmin, qmax)``.

        ``scale``, ``qmin``, ``qmax``: ``(g, K)`` with ``qmax - qmin`` the same
        everywhere. Returns ``(g, K)``. Up to ``_EXACT_CELLS`` levels, exact:
        the cell of level ``k`` is ``[(k - 1/2) s, (k + 1/2) s)`` (the end cells
        reach to -inf / +inf, which is the clipping error), and summing
        ``int (x - k s)**2`` over cells by parts gives
        ``T2 - 2 s (qmax T1 - sum_k M1(b_k)) + s**2 (qmax**2 T0 - sum_k (2k-1) M0(b_k))``
        over the inner boundaries ``b_k = (k - 1/2) s``, ``k = qmin+1 .. qmax``.
        With more levels: exact clipping error plus ``s**2 / 12`` per value inside.
        """
        cells = int(round(float((qmax - qmin).reshape(-1)[0])))
        if cells <= _EXACT_CELLS:
            k = qmin[..., None] + torch.arange(1, cells + 1, dtype=torch.float64,
                                               device=scale.device)
            m0, m1, _ = self.at((k - 0.5) * scale[..., None], second=False)
            return (self.t2 - 2 * scale * (qmax * self.t1 - m1.sum(-1))
                    + scale * scale * (qmax * qmax * self.t0 - ((2 * k - 1) * m0).sum(-1)))
        lo, hi = qmin * scale, qmax * scale
        a0, a1, a2 = self.at(lo)
        b0, b1, b2 = self.at(hi)
        assert a2 is not None and b2 is not None  # second moments were asked for
        below = a2 - 2 * lo * a1 + lo * lo * a0
        above = (self.t2 - b2) - 2 * hi * (self.t1 - b1) + hi * hi * (self.t0 - b0)
        return below + above + scale * scale / 12 * (b0 - a0)


def _argmin_last(err: Tensor) -> Tensor:
    """Index of the minimum along the last dim, the last one among exact ties."""
    k = err.shape[-1]
    return k - 1 - torch.flip(err, dims=(-1,)).argmin(-1)


def _search(err_of: Callable[[Tensor], Tensor], groups: int, grid: int,
            device: torch.device) -> Tensor:
    """``(g,)`` ratio in (0, 1] minimising ``err_of(ratios (g, K)) -> (g, K)``.

    ``grid`` ratios ``k / grid``, then ``_FINE`` ratios spanning one coarse
    step either side of the best. Exact ties go to the larger ratio.
    """
    coarse = torch.arange(1, grid + 1, dtype=torch.float64, device=device) / grid
    err = err_of(coarse.expand(groups, grid))
    pick = _argmin_last(err)
    best_r, best_e = coarse[pick], err.gather(1, pick[:, None]).squeeze(1)
    offs = torch.linspace(-1.0, 1.0, _FINE, dtype=torch.float64, device=device) / grid
    fine = (best_r[:, None] + offs).clamp(1.0 / (grid * _FINE), 1.0)
    err_f = err_of(fine)
    pick_f = _argmin_last(err_f)
    better = err_f.gather(1, pick_f[:, None]).squeeze(1) < best_e
    return torch.where(better, fine.gather(1, pick_f[:, None]).squeeze(1), best_r)


def _mse_range(hist: _Hist, mn: Tensor, mx: Tensor, bits: int, symmetric: bool,
               grid: int) -> tuple[Tensor, Tensor]:
    """MSE-optimal ranges ``(G,)``; groups with ``max |x| = 0`` keep ``(min, max)``."""
    dev = hist.device
    amax = torch.maximum(mn.abs(), mx.abs())
    unit = torch.where(amax > 0, amax, torch.ones_like(amax))   # work in units of max |x|
    e0_all, w_all = hist.k0 * hist.w / unit, hist.w / unit
    cells = 2 ** bits - 2 if symmetric else 2 ** bits - 1
    queries = cells if cells <= _EXACT_CELLS else 2              # M(x) look-ups per candidate
    lo_out, hi_out = mn.clone(), mx.clone()
    step = max(1, _ELEMS // (max(grid, _FINE) * queries))
    rows_all = torch.nonzero(amax > 0).squeeze(1)
    for start in range(0, rows_all.numel(), step):
        rows = rows_all[start:start + step]
        g = rows.numel()
        mom = _Moments(hist.counts[rows], e0_all[rows], w_all[rows])
        if symmetric:
            qmax = float(2 ** (bits - 1) - 1)

            def err_sym(r: Tensor, qmax: float = qmax, mom: _Moments = mom) -> Tensor:
                bound = torch.full_like(r, qmax)
                return mom.grid_error(r / qmax, -bound, bound)

            t = _search(err_sym, g, grid, dev) * amax[rows]
            lo_out[rows], hi_out[rows] = -t, t
            continue

        mn_n, mx_n = (mn[rows] / unit[rows])[:, None], (mx[rows] / unit[rows])[:, None]
        lo_n, hi_n = _asym_search(mom, mn_n, mx_n, float(2 ** bits - 1), grid)
        lo_out[rows] = lo_n.squeeze(1) * unit[rows]
        hi_out[rows] = hi_n.squeeze(1) * unit[rows]
    return lo_out, hi_out


def _asym_search(mom: _Moments, mn: Tensor, mx: Tensor, levels: float,
                 grid: int) -> tuple[Tensor, Tensor]:
    """MSE-optimal asymmetric range ``(lo, hi)`` (each ``(g, 1)``) inside ``[mn, mx]`` (``(g, 1)``).

    Both ends scaled by one ratio; then, for two-sided groups only, the low
    end alone and the high end alone (one-sided groups have a single free end).
    """
    dev = mn.device

    def err(m: _Moments, lo: Tensor, hi: Tensor) -> Tensor:
        lo = torch.clamp(lo, max=0.0)            # the grid always contains 0
        hi = torch.clamp(hi, min=0.0)
        scale = ((hi - lo) / levels).clamp_min(1e-12)
        zp = torch.clamp(torch.round(-lo / scale), 0.0, levels)
        return m.grid_error(scale, -zp, levels - zp)

    def lo_at(r: Tensor) -> Tensor:
        return torch.where(mn >= 0, mn, r * mn)

    def hi_at(r: Tensor) -> Tensor:
        return torch.where(mx <= 0, mx, r * mx)

    r = _search(lambda r: err(mom, lo_at(r), hi_at(r)), mn.shape[0], grid, dev)[:, None]
    lo, hi = lo_at(r), hi_at(r)
    two = torch.nonzero(((mn < 0) & (mx > 0)).squeeze(1)).squeeze(1)
    if two.numel():
        sub, mn2, mx2, hi2 = mom.take(two), mn[two], mx[two], hi[two]
        r = _search(lambda r: err(sub, r * mn2, hi2.expand_as(r)), two.numel(), grid, dev)
        lo2 = r[:, None] * mn2
        r = _search(lambda r: err(sub, lo2.expand_as(r), r * mx2), two.numel(), grid, dev)
        lo[two], hi[two] = lo2, r[:, None] * mx2
    return lo, hi
