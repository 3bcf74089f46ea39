"""``write_report(run_dir)``: read a run directory, write report.html / .md / .json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bitsmith.atomic import atomic_write_bytes, atomic_write_text
from bitsmith.report import figures as figs
from bitsmith.report.html import render_html
from bitsmith.report.markdown import render_markdown
from bitsmith.report.summary import build_summary
from bitsmith.rundir import RunData, load_run

REPORT_HTML, REPORT_MD, REPORT_JSON, FIGURE_DIR = (
    "report.html", "report.md", "report.json", "report_files")
ESTIMATES = ("hessian", "fisher", "fisher_diag")


def make_figures(data: RunData, summary: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every figure the run's files support."""
    layers = summary["layers"]
    out = {"bits": figs.bits_figure([r["name"] for r in layers],
                                    [r["weight_bits"] for r in layers],
                                    [r["act_bits"] for r in layers])}
    chosen = summary["chosen"]
    trials = summary["trials"]
    idx = None if chosen is None else next(
        (i for i, t in enumerate(trials) if t["name"] == chosen["name"]), None)
    out["pareto"] = figs.pareto_figure(trials, summary["pareto"], idx,
                                       (summary["run"].get("fp32") or {}).get("accuracy"),
                                       summary.get("eval_role", "validation"))
    sens = data.sensitivity
    if sens is not None:
        primary = summary["sensitivity"]["primary"]
        shown = [primary] + [m for m in ESTIMATES if m in sens.metrics and m != primary]
        widest = max(sens.space, key=lambda n: len(sens.space[n]))
        picks = {n: sens.space[n].index(data.policy[n]) for n in sens.space
                 if n in data.policy and data.policy[n] in sens.space[n]}
        out["sensitivity"] = figs.sensitivity_figure(
            sens.space.names, sens.space.labels(widest), {m: sens.get(m) for m in shown},
            picks)
    if data.search:
        png = figs.search_figure(data.search)
        if png is not None:
            out["search"] = png
    return out


def _clean(obj: Any) -> Any:
    """JSON-safe copy (NaN/inf -> None)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(run_dir: str | Path) -> Path:
    """Render the run directory's report; returns the path of ``report.html``.

    Writes ``report.html`` (self-contained: inline CSS, base64 PNG figures),
    ``report.md`` (figures as PNG files under ``report_files/``) and ``report.json``
    (the summary data) into ``run_dir``.

    Raises:
        RunDirError: the directory does not exist or lacks a required file (named).
    """
    data = load_run(run_dir)
    summary = build_summary(data)
    pngs = make_figures(data, summary)
    fig_dir = data.dir / FIGURE_DIR
    fig_dir.mkdir(exist_ok=True)
    files = {}
    for name, png in pngs.items():
        atomic_write_bytes(fig_dir / f"{name}.png", png)
        files[name] = f"{FIGURE_DIR}/{name}.png"
    atomic_write_text(data.dir / REPORT_MD, render_markdown(summary, files))
    atomic_write_text(data.dir / REPORT_JSON, json.dumps(_clean(summary), indent=1))
    path = data.dir / REPORT_HTML
    atomic_write_text(path, render_html(summary, pngs))
    return path
