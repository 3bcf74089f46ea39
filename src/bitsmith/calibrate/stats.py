"""Streaming tensor statistics for calibration, gathered once and reused for every bit width.

A :class:`TensorStats` watches one tensor (an activation, batch after batch, or
a weight, once) and keeps everything the range observers of
:mod:`bitsmith.calibrate.observers` need, in a single pass and without ever
storing the data:

* element count, number of batches, running ``min`` / ``max`` (per tensor and,
  with a ``channel_axis``, per channel);
* a histogram of the values per tensor (``bins`` bins, default 2048), and
  optionally one per channel (``keep_channel_hist=True``, ``C x bins``).

Nothing in the statistics depends on the bit width, the scheme (symmetric or
not) or the observer, so one calibration pass serves every candidate
configuration a bit-width search wants to try.

Histogram grid
--------------
Bin ``j`` of a histogram covers ``[(k0 + j) * w, (k0 + j + 1) * w)``: edges lie
on integer multiples of the bin width ``w``, so ``0`` is always an edge and the
``|x|`` histogram is an exact fold of the signed one. The first batch sets ``w``
so that its range fills the bins; when a later batch falls outside the window,
``w`` is multiplied by a power of two and the old counts are re-binned into the
wider grid. Because the new edges are a subset of the old ones this re-binning
is exact (no interpolation, unlike the proportional re-binning of ONNX
Runtime's HistogramCollector or PyTorch's HistogramObserver), early batches are
never lost, and the final bin width is at most twice the width a one-shot
histogram of all the data would get.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

DEFAULT_BINS = 2048
_MIN_WIDTH = 1e-30          # bin width floor, for all-zero data
_REL_WIDTH = 2.0 ** -16     # bin width floor relative to |x|, for constant data
_CHUNK = 1 << 22            # elements histogrammed per kernel call (bounds temporaries)


def _hist_device(device: torch.device) -> torch.device:
    """Device holding the float64 histogram counts (MPS has no float64: use the CPU)."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def _f64(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as float64 on ``device`` (moved first: the source device may lack float64)."""
    return t.to(device).double()


class _Hist:
    """``G`` histograms of ``B`` bins on zero-anchored grids (internal).

    Bin ``j`` of group ``g`` covers ``[(k0[g] + j) * w[g], (k0[g] + j + 1) * w[g])``.

    Attributes:
        counts: ``(G, B)`` float64 counts (integers, exact up to 2**53).
        k0: ``(G,)`` float64 integer-valued index of the first bin.
        w: ``(G,)`` float64 bin widths, in the units of the data.
    """

    __slots__ = ("counts", "k0", "w")

    def __init__(self, counts: Tensor, k0: Tensor, w: Tensor) -> None:
        self.counts = counts
        self.k0 = k0
        self.w = w

    @property
    def bins(self) -> int:
        return self.counts.shape[1]

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def clone(self) -> _Hist:
        return _Hist(self.counts.clone(), self.k0.clone(), self.w.clone())

    def edges(self) -> Tensor:
        """``(G, B + 1)`` bin edges."""
        j = torch.arange(self.bins + 1, dtype=torch.float64, device=self.device)
        return (self.k0[:, None] + j) * self.w[:, None]

    # ------------------------------------------------------------ the grid
    @staticmethod
    def fit_width(lo: Tensor, hi: Tensor, w: Tensor, bins: int) -> Tensor:
        """Smallest ``w * 2**d`` (``d >= 0``) whose grid holds ``[lo, hi]`` in ``bins`` bins."""
        w = w.clone()
        for _ in range(64):  # each round at least doubles every failing width
            need = torch.floor(hi / w) - torch.floor(lo / w) + 1
            bad = need > bins
            if not bool(bad.any()):
                return w
            d = torch.ceil(torch.log2(need / bins)).clamp_min(1)
            w = torch.where(bad, w * torch.exp2(d), w)
        raise RuntimeError("histogram grid did not converge (non-finite range?)")

    @classmethod
    def covering(cls, lo: Tensor, hi: Tensor, bins: int) -> _Hist:
        """An empty histogram whose grid tightly covers ``[lo, hi]`` (``(G,)`` float64)."""
        span = torch.maximum(hi - lo, _REL_WIDTH * torch.maximum(lo.abs(), hi.abs()))
        w = cls.fit_width(lo, hi, span.clamp_min(_MIN_WIDTH) / (bins - 1), bins)
        counts = torch.zeros(lo.shape[0], bins, dtype=torch.float64, device=lo.device)
        return cls(counts, torch.floor(lo / w), w)

    def grown(self, lo: Tensor, hi: Tensor) -> _Hist:
        """This histogram on a grid that also covers ``[lo, hi]`` (``(G,)``; contains the data)."""
        w = self.fit_width(lo, hi, self.w, self.bins)
        k0 = torch.floor(lo / w)
        if bool((w == self.w).all()) and bool((k0 == self.k0).all()):
            return self
        return self.rebinned(k0, w)

    def rebinned(self, k0: Tensor, w: Tensor) -> _Hist:
        """Counts moved onto the grid ``(k0, w)`` by interpolating the piecewise-linear CDF.

        Exact (integer counts preserved) when every new edge is an old edge,
        i.e. ``w`` is ``self.w`` times a power of two: the case of streaming growth.
        """
        bins = self.bins
        j = torch.arange(bins + 1, dtype=torch.float64, device=self.device)
        ratio = (w / self.w)[:, None]
        pos = ((k0[:, None] + j) * ratio - self.k0[:, None]).clamp_(0, bins)
        idx = pos.floor().clamp_(max=bins - 1).long()
        frac = pos - idx
        cum = torch.nn.functional.pad(self.counts.cumsum(1), (1, 0))
        cdf = cum.gather(1, idx) + frac * self.counts.gather(1, idx)
        return _Hist(cdf.diff(dim=1).clamp_min_(0), k0.clone(), w.clone())

    def abs_from_zero(self) -> _Hist:
        """The histogram of ``|x|`` on a grid starting at 0 (``k0 = 0``), exact.

        Bins fold onto ``[|g| w, (|g|+1) w)``; when the folded support does not
        fit in ``B`` bins from zero (data far from 0) the width is multiplied by
        a power of two.
        """
        groups, bins = self.counts.shape
        g = self.k0[:, None] + torch.arange(bins, dtype=torch.float64, device=self.device)
        a = torch.where(g >= 0, g, -g - 1)
        top = torch.where(self.counts > 0, a, torch.full_like(a, -1.0)).amax(1)
        d = torch.ceil(torch.log2((top + 1).clamp_min(1) / bins)).clamp_min(0)
        f = torch.exp2(d)
        idx = torch.floor(a / f[:, None]).clamp_(0, bins - 1).long()
        counts = torch.zeros_like(self.counts).scatter_add_(1, idx, self.counts)
        return _Hist(counts, torch.zeros_like(self.k0), self.w * f)

    # ------------------------------------------------------------ counting
    def add_(self, x: Tensor) -> None:
        """Count the values of ``x`` (``(G, M)`` float32, inside the grid) into the bins."""
        groups, bins = self.counts.shape
        origin = (self.k0 * self.w).float().to(x.device)
        inv = (1.0 / self.w).float().to(x.device)
        if groups == 1:
            lo, hi = float(self.k0[0] * self.w[0]), float((self.k0[0] + bins) * self.w[0])
            # <= 2**24 values per call, so that histc's float32 counts stay exact
            for chunk in x.reshape(-1).split(_CHUNK):
                h = torch.histc(chunk, bins=bins, min=lo, max=hi)
                if int(h.sum().item()) != chunk.numel():  # an extreme value rounded off the grid
                    idx = (chunk - origin[0]).mul_(inv[0]).floor_().clamp_(0, bins - 1).long()
                    h = torch.bincount(idx, minlength=bins)
                self.counts[0] += h.to(self.device).double()
            return
        offset = (torch.arange(groups, device=x.device) * bins)[:, None]
        step = max(1, _CHUNK // groups)
        total = torch.zeros(groups * bins, dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[1], step):
            part = x[:, start:start + step]
            idx = (part - origin[:, None]).mul_(inv[:, None]).floor_().clamp_(0, bins - 1).long()
            total += torch.bincount((idx + offset).reshape(-1), minlength=groups * bins)
        self.counts += total.view(groups, bins).to(self.device).double()

    @classmethod
    def of_data(cls, x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> _Hist:
        """A histogram of ``x`` (``(G, M)``) fitted to its range ``[lo, hi]`` (``(G,)``)."""
        dev = _hist_device(x.device)
        hist = cls.covering(_f64(lo, dev), _f64(hi, dev), bins)
        hist.add_(x)
        return hist


def _check_finite(x: Tensor, mn: Tensor, mx: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (detected cheaply via its min/max)."""
    if bool(torch.isfinite(mn)) and bool(torch.isfinite(mx)):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    found = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "inf")) if n]
    raise ValueError(
        f"calibration data contains {' and '.join(found)} value(s) out of {x.numel()} "
        f"(shape {tuple(x.shape)}); a range cannot be calibrated from non-finite data. Check "
        "the model and its inputs (overflow, division by zero, uninitialised buffers). The "
        "statistics were not updated."
    )


class TensorStats:
    """Streaming statistics of one tensor, from which any observer / bit width derives a range.

    Args:
        channel_axis: axis of the channels (0 for weights, 1 for NCHW / NC
            activations, -1 allowed) for per-channel statistics, or ``None``.
        keep_channel_hist: also keep one histogram per channel (``C x bins``
            float64), needed by per-channel percentile / entropy / mse;
            ignored without a ``channel_axis``. Per-channel min/max are always
            kept when ``channel_axis`` is set.
        bins: number of histogram bins (per tensor and per channel).

    Attributes:
        count: number of elements seen.
        batches: number of (non-empty) tensors seen.
        min, max: ``()`` float32 running minimum / maximum, ``None`` while empty.
        ch_min, ch_max: ``(C,)`` float32 per-channel running min / max.
        num_channels: ``C``, once known.

    The statistics live on the device of the first tensor (histogram counts
    on the CPU for devices without float64). Ranges computed by
    :func:`~bitsmith.calibrate.compute_range` are cached inside the object and
    dropped whenever it changes.
    """

    def __init__(self, channel_axis: int | None = None, keep_channel_hist: bool = False,
                 bins: int = DEFAULT_BINS) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 8:
            raise ValueError(f"bins must be an integer >= 8, got {bins!r}")
        if channel_axis is not None and (isinstance(channel_axis, bool)
                                         or not isinstance(channel_axis, int)):
            raise ValueError(f"channel_axis must be an int or None, got {channel_axis!r}")
        self.channel_axis = channel_axis
        self.keep_channel_hist = bool(keep_channel_hist) and channel_axis is not None
        self.bins = bins
        self.count = 0
        self.batches = 0
        self.num_channels: int | None = None
        self.min: Tensor | None = None
        self.max: Tensor | None = None
        self.ch_min: Tensor | None = None
        self.ch_max: Tensor | None = None
        self._hist: _Hist | None = None
        self._ch_hist: _Hist | None = None
        self._raw: tuple[Tensor, int] | None = None   # TensorStats.of: the tensor, lazily binned
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    # ---------------------------------------------------------------- build
    @classmethod
    def of(cls, x: Tensor, channel_axis: int | None = None, *,
           bins: int = DEFAULT_BINS) -> TensorStats:
        """Statistics of a single tensor (typically a weight), per channel if ``channel_axis``.

        Min/max are computed at once; the histograms are built from ``x`` the
        first time an observer needs one (so the ``"minmax"`` observer costs a
        single reduction). ``x`` is referenced, not copied, until then: do not
        modify it in place before computing ranges (a ``RuntimeError`` says so
        if it was).
        """
        stats = cls(channel_axis, keep_channel_hist=channel_axis is not None, bins=bins)
        x = torch.as_tensor(x).detach()
        if x.numel() == 0:
            return stats
        x = x.float()
        stats._observe_extrema(x)
        stats._raw = (x, x._version)
        return stats

    def update(self, x: Tensor) -> None:
        """Add one batch ``x`` (any shape, any float/int dtype; empty tensors are ignored).

        Raises ``ValueError`` if ``x`` contains NaN/inf or its channel count
        differs from earlier batches; the statistics are then unchanged.
        """
        x = torch.as_tensor(x).detach()
        if x.numel() == 0:
            return
        self._materialize()
        x = x.float()
        if self.min is not None and x.device != self.min.device:
            x = x.to(self.min.device)
        xc = self._observe_extrema(x)
        dev = _hist_device(x.device)
        mn, mx = self._extrema()
        lo, hi = _f64(mn, dev).view(1), _f64(mx, dev).view(1)
        self._hist = _Hist.covering(lo, hi, self.bins) if self._hist is None \
            else self._hist.grown(lo, hi)
        self._hist.add_(x.reshape(1, -1))
        if self.keep_channel_hist and xc is not None:
            cmn, cmx = self._channel_extrema()
            lo, hi = _f64(cmn, dev), _f64(cmx, dev)
            self._ch_hist = _Hist.covering(lo, hi, self.bins) if self._ch_hist is None \
                else self._ch_hist.grown(lo, hi)
            self._ch_hist.add_(xc)

    def _extrema(self) -> tuple[Tensor, Tensor]:
        """``(min, max)``, ``()`` each; ValueError while empty."""
        if self.min is None or self.max is None:
            raise ValueError("no data was observed: the TensorStats is empty")
        return self.min, self.max

    def _channel_extrema(self) -> tuple[Tensor, Tensor]:
        """``(ch_min, ch_max)``, ``(C,)`` each; ValueError without them."""
        if self.ch_min is None or self.ch_max is None:
            raise ValueError("no per-channel statistics (no channel_axis, or no data yet)")
        return self.ch_min, self.ch_max

    def _channels(self, x: Tensor) -> Tensor:
        """``x`` as ``(C, M)``, channels along ``channel_axis``."""
        axis = self.channel_axis
        if axis is None:
            raise ValueError("per-channel statistics need a channel_axis")
        if x.dim() == 0 or not -x.dim() <= axis < x.dim():
            raise ValueError(f"channel_axis={axis} is out of range for a tensor of shape "
                             f"{tuple(x.shape)}")
        channels = x.shape[axis]
        if self.num_channels is not None and channels != self.num_channels:
            raise ValueError(f"tensor of shape {tuple(x.shape)} has {channels} channels on axis "
                             f"{axis}, earlier batches had {self.num_channels}")
        return x.movedim(axis, 0).reshape(channels, -1)

    def _observe_extrema(self, x: Tensor) -> Tensor | None:
        """Check ``x``, fold it into count/min/max; returns its ``(C, M)`` view if per channel."""
        mn, mx = torch.aminmax(x.reshape(-1))
        _check_finite(x, mn, mx)
        xc = None
        if self.channel_axis is not None:
            xc = self._channels(x)
            cmn, cmx = torch.aminmax(xc, dim=1)
            self.num_channels = xc.shape[0]
            self.ch_min = cmn if self.ch_min is None else torch.minimum(self.ch_min, cmn)
            self.ch_max = cmx if self.ch_max is None else torch.maximum(self.ch_max, cmx)
        self.min = mn if self.min is None else torch.minimum(self.min, mn)
        self.max = mx if self.max is None else torch.maximum(self.max, mx)
        self.count += x.numel()
        self.batches += 1
        self._cache.clear()
        return xc

    def _raw_tensor(self) -> Tensor:
        if self._raw is None:
            raise RuntimeError("no TensorStats.of() tensor is pending")
        x, version = self._raw
        if x._version != version:
            raise RuntimeError(
                "the tensor given to TensorStats.of() was modified in place before its "
                "histogram was built; call TensorStats.of() again on the current values"
            )
        return x

    def _materialize(self) -> None:
        """Build every histogram still pending from a :meth:`of` tensor and drop the tensor."""
        if self._raw is None:
            return
        self._hist_for(False)
        if self.keep_channel_hist:
            self._hist_for(True)
        self._raw = None

    def _hist_for(self, per_channel: bool) -> _Hist:
        """The per-tensor (``G = 1``) or per-channel (``G = C``) histogram."""
        if per_channel:
            if self._ch_hist is None and self._raw is not None and self.keep_channel_hist:
                xc = self._channels(self._raw_tensor())
                self._ch_hist = _Hist.of_data(xc, *self._channel_extrema(), self.bins)
            if self._ch_hist is None:
                raise ValueError(
                    "per-channel histogram-based ranges need per-channel histograms: create "
                    "TensorStats(channel_axis=..., keep_channel_hist=True) before calibrating"
                )
            return self._ch_hist
        if self._hist is None and self._raw is not None:
            x = self._raw_tensor().reshape(1, -1)
            mn, mx = self._extrema()
            self._hist = _Hist.of_data(x, mn.view(1), mx.view(1), self.bins)
        if self._hist is None:
            raise ValueError("no data was observed: the TensorStats is empty")
        return self._hist

    # ------------------------------------------------------------ combine
    def merge(self, other: TensorStats) -> TensorStats:
        """Fold ``other`` (e.g. another worker's statistics of the same tensor) into ``self``.

        Min/max/counts combine exactly; histograms are moved onto a common grid
        (exactly when the bin widths differ by a power of two, else by
        interpolating the CDF). Returns ``self``.
        """
        if not isinstance(other, TensorStats):
            raise TypeError(f"can only merge a TensorStats, got {type(other).__name__}")
        if (other.channel_axis, other.bins) != (self.channel_axis, self.bins):
            raise ValueError(
                f"cannot merge statistics with channel_axis/bins {other.channel_axis}/"
                f"{other.bins} into {self.channel_axis}/{self.bins}"
            )
        if other.is_empty:
            return self
        if self.num_channels is not None and other.num_channels != self.num_channels:
            raise ValueError(f"cannot merge statistics of {other.num_channels} channels into "
                             f"{self.num_channels}")
        keep = self.keep_channel_hist and other.keep_channel_hist
        self._materialize()
        other._materialize()
        if self.is_empty:
            state = copy.deepcopy({k: v for k, v in other.__dict__.items() if k != "_cache"})
            self.__dict__.update(state)
            self.keep_channel_hist = keep
            if not keep:
                self._ch_hist = None
            self._cache = {}
            return self
        (mn, mx), (omn, omx) = self._extrema(), other._extrema()
        dev = mn.device
        self.min, self.max = torch.minimum(mn, omn.to(dev)), torch.maximum(mx, omx.to(dev))
        if self.channel_axis is not None:
            (cmn, cmx), (ocmn, ocmx) = self._channel_extrema(), other._channel_extrema()
            self.ch_min = torch.minimum(cmn, ocmn.to(dev))
            self.ch_max = torch.maximum(cmx, ocmx.to(dev))
        self.count += other.count
        self.batches += other.batches
        self._hist = self._merge_hist(self._hist_for(False), other._hist_for(False),
                                      self.min.view(1), self.max.view(1))
        self.keep_channel_hist = keep
        self._ch_hist = (self._merge_hist(self._hist_for(True), other._hist_for(True),
                                          *self._channel_extrema()) if keep else None)
        self._cache.clear()
        return self

    def _merge_hist(self, a: _Hist, b: _Hist, lo: Tensor, hi: Tensor) -> _Hist:
        b = _Hist(b.counts.to(a.device), b.k0.to(a.device), b.w.to(a.device))
        lo, hi = _f64(lo, a.device), _f64(hi, a.device)
        w = _Hist.fit_width(lo, hi, torch.maximum(a.w, b.w), self.bins)
        k0 = torch.floor(lo / w)
        merged = a.rebinned(k0, w)
        merged.counts += b.rebinned(k0, w).counts
        return merged

    # ------------------------------------------------------------ inspect
    @property
    def is_empty(self) -> bool:
        """True while no element has been observed."""
        return self.count == 0

    def histogram(self, per_channel: bool = False) -> tuple[Tensor, Tensor]:
        """``(counts, edges)``: float64 ``(bins,)`` / ``(bins + 1,)``, or ``(C, bins)`` /
        ``(C, bins + 1)`` per channel. Bins are half-open ``[edge_j, edge_j+1)``."""
        hist = self._hist_for(per_channel)
        if per_channel:
            return hist.counts.clone(), hist.edges()
        return hist.counts[0].clone(), hist.edges()[0]

    def clear_cache(self) -> None:
        """Forget cached ranges (done automatically on update/merge)."""
        self._cache.clear()

    def __repr__(self) -> str:
        if self.is_empty:
            return f"TensorStats(empty, channel_axis={self.channel_axis}, bins={self.bins})"
        mn, mx = self._extrema()
        return (f"TensorStats(count={self.count}, batches={self.batches}, "
                f"min={float(mn):.4g}, max={float(mx):.4g}, "
                f"channel_axis={self.channel_axis}, channels={self.num_channels}, "
                f"bins={self.bins})")
