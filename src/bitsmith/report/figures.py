"""Report figures, drawn with matplotlib's Agg canvas (no pyplot, no global backend change)
and returned as PNG bytes for embedding (base64) or writing next to the Markdown."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def sensitivity_figure(layers: Sequence[str], labels: Sequence[str],
                       panels: Mapping[str, Mapping[str, Sequence[float]]],
                       chosen: Mapping[str, int] | None = None) -> bytes:
    """One panel per score: x = layers (execution order), y = score (log), one line per
    candidate label (e.g. ``W2A8``); a black ring marks each layer's chosen candidate.

    Args:
        labels: candidate labels (candidate positions shared by all layers).
        panels: ``score name -> layer -> [value per candidate]``.
        chosen: ``layer -> candidate index`` of the chosen policy (optional).
    """
    n = len(panels)
    fig = Figure(figsize=(11, 2.3 * n + 0.6))
    x = list(range(len(layers)))
    for k, (metric, values) in enumerate(panels.items()):
        ax = fig.add_subplot(n, 1, k + 1)
        floor = _positive_floor(values, layers)
        for c, label in enumerate(labels):
            ys = [max(values[name][c], floor) if c < len(values[name]) else float("nan")
                  for name in layers]
            ax.plot(x, ys, marker="o", ms=3, lw=1.2, label=label)
        if chosen:
            cx = [i for i, name in enumerate(layers) if name in chosen]
            cy = [max(values[layers[i]][chosen[layers[i]]], floor) for i in cx]
            ax.scatter(cx, cy, s=70, facecolors="none", edgecolors="black", lw=1.4,
                       label="chosen", zorder=5)
        ax.set_yscale("log")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.set_xticks(x)
        ax.set_xticklabels(layers if k == n - 1 else [""] * len(layers), rotation=60,
                           ha="right", fontsize=8)
        if k == 0:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
            ax.set_title("per-layer sensitivity: one layer quantized at a time (log scale; "
                         "values <= 0 drawn at the floor)", fontsize=10)
    return _png(fig)


def _positive_floor(values: Mapping[str, Sequence[float]], layers: Sequence[str]) -> float:
    pos = [v for n in layers for v in values[n] if v > 0]
    return min(pos) / 10 if pos else 1e-12


def pareto_figure(trials: Sequence[Mapping[str, Any]], front: Sequence[int],
                  chosen: int | None, fp32_accuracy: float | None,
                  role: str = "validation") -> bytes:
    """Accuracy (%, on the ``role`` data) vs size (KiB) of every trial, coloured by source;
    every point labelled (its name, or with more than 12 points its ``#`` in the trials
    table), the Pareto front as a step line, the chosen trial as a red star, FP32 accuracy
    as a dashed line. Sizes spanning more than 4x use a log axis."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trials):
        groups[t.get("source") or "trial"].append(i)
    for source, idx in groups.items():
        ax.scatter([trials[i]["size_bytes"] / 1024 for i in idx],
                   [trials[i]["accuracy"] for i in idx], s=28, alpha=0.8, label=source)
    fx = [trials[i]["size_bytes"] / 1024 for i in front]
    fy = [trials[i]["accuracy"] for i in front]
    ax.step(fx, fy, where="post", color="gray", lw=1.2, label="Pareto front")
    if chosen is not None:
        t = trials[chosen]
        ax.scatter([t["size_bytes"] / 1024], [t["accuracy"]], marker="*", s=260, color="red",
                   edgecolors="black", zorder=6, label=f"chosen: {t['name']}")
    if fp32_accuracy is not None:
        ax.axhline(fp32_accuracy, ls="--", color="black", lw=1, label="FP32")
    sizes = [t["size_bytes"] for t in trials]
    if max(sizes) > 4 * min(sizes):
        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))  # 6, 10, 20 (not 6x10^0)
    ax.margins(x=0.12, y=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("model size (KiB)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"{role} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over a point
    by_name = len(trials) <= 12  # every point labelled; crowded plots by table number
    _place_labels(fig, ax, [(t["size_bytes"] / 1024, t["accuracy"]) for t in trials],
                  [t["name"] if by_name else f"#{i}" for i, t in enumerate(trials)])
    ax.set_title(f"{role} accuracy vs size of every policy tried"
                 + ("" if by_name else " (labels: # in the trials table)"))
    return _png(fig)


# offsets (points) tried in turn for a label: right, above, below, left of its point
_LABEL_OFFSETS = ((6, -3, "left"), (6, 6, "left"), (6, -12, "left"), (-6, -3, "right"),
                  (-6, 6, "right"), (-6, -12, "right"), (0, 10, "center"), (0, -16, "center"))


def _place_labels(fig: Figure, ax: Any, points: Sequence[tuple[float, float]],
                  texts: Sequence[str]) -> None:
    """Annotate each point with its text at the first offset whose box overlaps no label
    placed before it (else the first offset): labels of close points stay readable."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    taken: list[Any] = []
    for (x, y), text in zip(points, texts):
        for k, (dx, dy, ha) in enumerate(_LABEL_OFFSETS):
            ann = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy),
                              textcoords="offset points", ha=ha,
                              bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                    "alpha": 0.8})
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in taken) or k == len(_LABEL_OFFSETS) - 1:
                break
            ann.remove()
        taken.append(box)


def bits_figure(layers: Sequence[str], weight_bits: Sequence[float],
                act_bits: Sequence[float]) -> bytes:
    """Bar chart of the chosen policy's weight and activation bits per layer (float = 32)."""
    fig = Figure(figsize=(11, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(layers)))
    ax.bar([i - 0.2 for i in x], weight_bits, width=0.4, label="weight bits")
    ax.bar([i + 0.2 for i in x], act_bits, width=0.4, label="activation bits")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("bits")
    top = max([*weight_bits, *act_bits, 1])
    ax.set_ylim(0, min(top, 32) + 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("chosen policy: bits per layer")
    return _png(fig)


def search_figure(points: Sequence[Mapping[str, Any]]) -> bytes | None:
    """One panel per numeric metric of ``search.jsonl``, one line per ``label``, vs step."""
    metrics = sorted({k for p in points for k, v in p.items()
                      if k not in ("step", "label") and isinstance(v, (int, float))})
    if not metrics:
        return None
    fig = Figure(figsize=(9, 2.6 * len(metrics) + 0.4))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, k + 1)
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for p in points:
            if metric in p and "step" in p:
                lines[p.get("label", "")].append((p["step"], p[metric]))
        for label, xy in lines.items():
            xy.sort()
            ax.plot([a for a, _ in xy], [b for _, b in xy], marker=".", label=label or metric)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if any(lines):
            ax.legend(fontsize=8)
    fig.axes[-1].set_xlabel("step")
    fig.suptitle("search curves", fontsize=10)
    return _png(fig)
