"""The Markdown report: the same tables; figures linked as PNG files next to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitsmith.report.tables import (
    Table,
    export_table,
    key_numbers,
    layer_table,
    sensitivity_cost_table,
    trials_table,
)


def _md_table(tab: Table) -> str:
    heads, rows = tab
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], figure_files: Mapping[str, str]) -> str:
    """The Markdown page; ``figure_files`` maps figure name -> relative PNG path."""
    run = summary["run"]
    out = [f"# bitsmith report: {run.get('model', '?')} on {run.get('dataset', '?')}", "",
           f"Evaluated on {run.get('eval_set', '')}; producer {run.get('producer', '')}; "
           f"{run.get('created', '')}.", ""]
    if summary["chosen"] is not None:
        rule = summary.get("rule")
        out += [f"Chosen policy: **{summary['chosen']['name']}**"
                + (f" - rule: {rule}" if rule else ""), ""]
    out += [summary.get("data_note", ""), ""]
    guard = summary.get("guard") or {}
    if guard.get("fired"):
        out += [f"> **Validation guard:** {guard.get('message', '')}", ""]
    out += [f"- {k}: **{v}**" for k, v in key_numbers(summary)]
    out += ["", "## Layers of the chosen policy", "", _md_table(layer_table(summary)), "",
            f"![bits per layer]({figure_files['bits']})", ""]
    if "sensitivity" in figure_files:
        out += ["## Per-layer sensitivity", "",
                f"![per-layer sensitivity]({figure_files['sensitivity']})", "",
                _md_table(sensitivity_cost_table(summary)), ""]
    out += ["## Accuracy vs size of every policy tried", "",
            f"![Pareto front]({figure_files['pareto']})", "", _md_table(trials_table(summary)),
            ""]
    if "search" in figure_files:
        out += ["## Search curves", "", f"![search curves]({figure_files['search']})", ""]
    if summary["export"] is not None:
        out += ["## Export", "", _md_table(export_table(summary)), ""]
    return "\n".join(out)
