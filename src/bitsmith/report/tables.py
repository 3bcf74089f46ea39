"""Table rows shared by the HTML and Markdown renderers: (headers, rows of strings).

Cells are plain text (names straight from the model, the policy and the run directory);
each renderer escapes them for its format and adds its own emphasis.
"""

from __future__ import annotations

from typing import Any

Table = tuple[list[str], list[list[str]]]


def _num(v: Any, fmt: str = "{:,.2f}") -> str:
    return "" if v is None else fmt.format(v)


def _pct(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{v:.2f}%"


def key_numbers(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the header cards; every accuracy says its data set."""
    chosen, cost, run = summary["chosen"], summary["cost"], summary["run"]
    role = summary.get("eval_role", "validation")
    fp32 = (run.get("fp32") or {}).get("accuracy")
    out = []
    if chosen is not None:
        out.append((f"accuracy (chosen, {role})", _pct(chosen["accuracy"])))
    if fp32 is not None:
        out.append((f"accuracy (FP32, {role})", _pct(fp32)))
    test = run.get("test") or {}
    if chosen is not None and (test.get("chosen") is not None
                               or chosen.get("test_accuracy") is not None):
        out.append(("accuracy (chosen, test)", _pct(test.get("chosen", chosen.get(
            "test_accuracy")))))
    fp32_test = test.get("fp32", (run.get("fp32") or {}).get("test_accuracy"))
    if fp32_test is not None:
        out.append(("accuracy (FP32, test)", _pct(fp32_test)))
    out += [("size", f"{cost['size_bytes'] / 1024:,.1f} KiB"),
            ("compression vs FP32", f"{cost['compression']:.2f}x"),
            ("BitOPs / example", f"{cost['bitops'] / 1e9:,.3f} G"),
            ("avg weight bits", f"{cost['avg_weight_bits']:.2f}")]
    return out


def layer_table(summary: dict[str, Any]) -> Table:
    """The model's layers with the chosen scheme / bits / sparsity and their cost (and, for a
    training-time search, the probability of the choice and the step it was fixed at)."""
    sens = summary["sensitivity"]
    searched = any(r.get("searched") for r in summary["layers"])
    heads = ["#", "layer", "type", "weight", "params", "MACs", "weight scheme", "w bits",
             "a bits", "sparsity", "bytes", "% size"]
    if sens is not None:
        heads.append(f"sensitivity ({sens['primary']})")
    if searched:
        heads += ["p(choice)", "fixed at step"]
    recon = summary.get("reconstruction") is not None
    if recon:
        heads += ["rounding", "reconstructed in"]
    rows = []
    for i, r in enumerate(summary["layers"]):
        scheme = r["weight_scheme"] + (f"/{r['weight_granularity']}" if r["weight_granularity"]
                                       else "")
        row = [str(i), r["name"], r["type"], r["weight_shape"], f"{r['params']:,}",
               f"{r['macs']:,}", scheme, "float" if r["weight_bits"] == 32 else
               str(r["weight_bits"]), "float" if r["act_bits"] == 32 else str(r["act_bits"]),
               f"{r['sparsity']:.2f}", f"{r['bytes']:,}", f"{100 * r['size_share']:.1f}"]
        if sens is not None:
            row.append(_num(r["sensitivity"], "{:.3g}"))
        if searched:
            fixed = ("" if not r.get("searched") else "end" if r.get("fixed_step") is None
                     else str(r["fixed_step"]))
            row += [_num(r.get("search_prob")), fixed]
        if recon:
            row += [r.get("rounding", ""), r.get("recon_unit") or ""]
        rows.append(row)
    return heads, rows


def reconstruction_table(summary: dict[str, Any]) -> Table:
    """One row per reconstructed unit (a layer or a block) of the chosen policy: its layers,
    iterations, reconstruction loss with round-to-nearest and learned, wall time."""
    recon = summary["reconstruction"]
    heads = ["unit", "layers", "iterations", "loss (nearest)", "loss (learned)", "ratio",
             "seconds", "from cache"]
    rows = [[u["name"], ", ".join(u["layers"]), str(u["iterations"]),
             _num(u["loss_before"], "{:.4g}"), _num(u["loss_after"], "{:.4g}"),
             _num(u["loss_before"] / u["loss_after"] if u["loss_after"] else None, "{:.2f}x"),
             _num(u["seconds"], "{:.1f}"), "yes" if u["cached"] else ""]
            for u in recon["units"]]
    return heads, rows


def reconstruction_note(summary: dict[str, Any]) -> str:
    """One sentence: method, units, calibration samples, wall time."""
    r = summary["reconstruction"]
    return (f"Rounding learned with {r['method']} ({r['settings'].get('iterations')} "
            f"iterations per unit, {r['samples']} calibration samples, "
            f"{len(r['units'])} units) in {r['seconds']:.1f} s wall.")


def trials_table(summary: dict[str, Any]) -> Table:
    """Every evaluated policy (``#`` = its label in the Pareto figure); Pareto-optimal ones
    and the chosen one flagged; accuracy columns say their data set. The last column is
    ``chosen``."""
    chosen = (summary["chosen"] or {}).get("name")
    role = summary.get("eval_role", "validation")
    with_test = any(t.get("test_accuracy") is not None for t in summary["trials"])
    heads = ["#", "policy", "source", f"accuracy % ({role})"]
    heads += ["accuracy % (test)"] if with_test else []
    heads += ["size KiB", "compression", "GBitOPs", "avg w bits", "Pareto", "chosen"]
    rows = []
    for i, t in enumerate(summary["trials"]):
        row = [str(i), t["name"], str(t.get("source", "")), _pct(t["accuracy"]).rstrip("%")]
        if with_test:
            row.append(_num(t.get("test_accuracy")))
        row += [f"{t['size_bytes'] / 1024:,.1f}", _num(t.get("compression"), "{:.2f}x"),
                _num(None if t.get("bitops") is None else t["bitops"] / 1e9, "{:.3f}"),
                _num(t.get("avg_weight_bits")), "yes" if t["pareto"] else "",
                "yes" if t["name"] == chosen else ""]
        rows.append(row)
    return heads, rows


def sensitivity_cost_table(summary: dict[str, Any]) -> Table:
    """Time each sensitivity score took (seconds)."""
    sens = summary["sensitivity"]
    return (["score", "seconds"],
            [[m, f"{sens['seconds'].get(m, float('nan')):.1f}"] for m in sens["metrics"]])


def export_table(summary: dict[str, Any]) -> Table:
    """One row per exported artifact, columns = the union of their keys."""
    arts = summary["export"]["artifacts"]
    keys: list[str] = []
    for a in arts:
        keys += [k for k in a if k not in keys]
    rows = [[_cell(a.get(k)) for k in keys] for a in arts]
    return keys, rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)
