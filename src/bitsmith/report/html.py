"""One self-contained HTML page: inline CSS, figures embedded as base64 PNG (opens offline)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

from bitsmith.report.tables import (
    Table,
    export_table,
    key_numbers,
    layer_table,
    reconstruction_note,
    reconstruction_table,
    sensitivity_cost_table,
    trials_table,
)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
background:#fff;max-width:1150px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid
#ddd;padding-bottom:4px} .meta{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;background:#f6f8fa}
.card .v{font-size:19px;font-weight:600} .card .l{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:right}
th{background:#eef1f4} td:nth-child(2),th:nth-child(2){text-align:left}
tr.chosen td{background:#fff3cd;font-weight:600} img{max-width:100%;border:1px solid #eee}
.note{font-size:12px;color:#555}
.warn{border:1px solid #d4a72c;background:#fff8c5;padding:6px 10px;font-size:13px}
"""


def _table(tab: Table, chosen_col: int | None = None) -> str:
    heads, rows = tab
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for row in rows:
        cls = ' class="chosen"' if chosen_col is not None and row[chosen_col] else ""
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join(out) + "</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(summary: dict[str, Any], figures: Mapping[str, bytes]) -> str:
    """The page. ``figures``: ``pareto``, ``bits`` and optionally ``sensitivity``, ``search``."""
    run = summary["run"]
    title = f"bitsmith report: {run.get('model', '?')} on {run.get('dataset', '?')}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<div class='meta'>evaluated on {html.escape(str(run.get('eval_set', '')))} "
             f"&middot; producer {html.escape(str(run.get('producer', '')))} &middot; "
             f"{html.escape(str(run.get('created', '')))}</div>"]
    chosen = summary["chosen"]
    if chosen is not None:
        rule = summary.get("rule")
        parts.append(f"<p>Chosen policy: <b>{html.escape(chosen['name'])}</b>"
                     + (f" &mdash; rule: {html.escape(rule)}" if rule else "") + "</p>")
    parts.append(f"<p class='note'>{html.escape(summary.get('data_note', ''))}</p>")
    guard = summary.get("guard") or {}
    if guard.get("fired"):
        parts.append(f"<p class='warn'><b>Validation guard:</b> "
                     f"{html.escape(guard.get('message', ''))}</p>")
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><div class='v'>{html.escape(v)}</div>"
        f"<div class='l'>{html.escape(k)}</div></div>" for k, v in key_numbers(summary))
        + "</div>")
    parts += ["<h2>Layers of the chosen policy</h2>", _table(layer_table(summary)),
              _img(figures["bits"], "bits per layer")]
    if summary.get("reconstruction") is not None:
        parts += ["<h2>Learned rounding (reconstruction)</h2>",
                  f"<p class='note'>{html.escape(reconstruction_note(summary))}</p>",
                  _table(reconstruction_table(summary))]
    if "sensitivity" in figures:
        parts += ["<h2>Per-layer sensitivity</h2>",
                  "<p class='note'>Each layer quantized alone with each candidate; larger is "
                  "more damaging. Black rings: the chosen policy's candidates.</p>",
                  _img(figures["sensitivity"], "per-layer sensitivity"),
                  _table(sensitivity_cost_table(summary))]
    parts += ["<h2>Accuracy vs size of every policy tried</h2>",
              _img(figures["pareto"], "Pareto front"),
              _table(trials_table(summary), chosen_col=-1)]
    if "search" in figures:
        parts += ["<h2>Search curves</h2>", _img(figures["search"], "search curves")]
    if summary["export"] is not None:
        parts += ["<h2>Export</h2>", _table(export_table(summary))]
    parts.append("</body></html>")
    return "\n".join(parts)
