"""The Markdown report: the same tables; figures linked as PNG files next to it."""

from __future__ import annotations

import html
import re
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

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")


def md_text(value: Any) -> str:
    """``value`` as inert Markdown text: HTML-escaped (``<script>``, ``<img onerror>`` show as
    text in every viewer), Markdown punctuation backslash-escaped (no links, images, emphasis
    or table cells injected by a name), newlines folded to spaces."""
    text = html.escape(str(value), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.splitlines())


def _md_table(tab: Table, chosen_col: int | None = None) -> str:
    heads, rows = tab
    lines = ["| " + " | ".join(md_text(h) for h in heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = [md_text(c) for c in row]
        if chosen_col is not None and row[chosen_col]:
            cells[chosen_col] = f"**{cells[chosen_col]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], figure_files: Mapping[str, str]) -> str:
    """The page; ``figure_files`` maps figure name -> relative PNG path. Every name from the
    model, the policy or the run directory goes through :func:`md_text`."""
    run = summary["run"]
    out = [f"# bitsmith report: {md_text(run.get('model', '?'))} on "
           f"{md_text(run.get('dataset', '?'))}", "",
           f"Evaluated on {md_text(run.get('eval_set', ''))}; producer "
           f"{md_text(run.get('producer', ''))}; {md_text(run.get('created', ''))}.", ""]
    if summary["chosen"] is not None:
        rule = summary.get("rule")
        out += [f"Chosen policy: **{md_text(summary['chosen']['name'])}**"
                + (f" - rule: {md_text(rule)}" if rule else ""), ""]
    out += [md_text(summary.get("data_note", "")), ""]
    guard = summary.get("guard") or {}
    if guard.get("fired"):
        out += [f"> **Validation guard:** {md_text(guard.get('message', ''))}", ""]
    out += [f"- {md_text(k)}: **{md_text(v)}**" for k, v in key_numbers(summary)]
    out += ["", "## Layers of the chosen policy", "", _md_table(layer_table(summary)), "",
            f"![bits per layer]({figure_files['bits']})", ""]
    if summary.get("reconstruction") is not None:
        out += ["## Learned rounding (reconstruction)", "", md_text(reconstruction_note(summary)),
                "", _md_table(reconstruction_table(summary)), ""]
    if "sensitivity" in figure_files:
        out += ["## Per-layer sensitivity", "",
                f"![per-layer sensitivity]({figure_files['sensitivity']})", "",
                _md_table(sensitivity_cost_table(summary)), ""]
    out += ["## Accuracy vs size of every policy tried", "",
            f"![Pareto front]({figure_files['pareto']})", "",
            _md_table(trials_table(summary), chosen_col=-1), ""]
    if "search" in figure_files:
        out += ["## Search curves", "", f"![search curves]({figure_files['search']})", ""]
    if summary["export"] is not None:
        out += ["## Export", "", _md_table(export_table(summary)), ""]
    return "\n".join(out)
