"""The report's content as plain data (what ``report.json`` holds and both renderers show)."""

from __future__ import annotations

from typing import Any

from bitsmith.cost import estimate, layer_cost
from bitsmith.pareto import pareto_front
from bitsmith.rundir import RunData

MEASURED_FIRST = ("measured_kl", "measured_loss", "measured_accuracy", "hessian", "fisher",
                  "fisher_diag")


def _spec_cells(spec: Any) -> dict[str, Any]:
    if spec is None or spec.weight is None:
        weight = {"weight_scheme": "float", "weight_bits": 32, "weight_granularity": ""}
    else:
        weight = {"weight_scheme": spec.weight.scheme, "weight_bits": spec.weight.bits,
                  "weight_granularity": spec.weight.granularity}
    act = 32 if spec is None or spec.act is None else spec.act.bits
    act_scheme = "float" if spec is None or spec.act is None else spec.act.scheme
    return {**weight, "act_scheme": act_scheme, "act_bits": act,
            "sparsity": 0.0 if spec is None else float(spec.sparsity)}


def primary_metric(metrics: list[str]) -> str | None:
    """The score shown first: a measured one when present, else the first estimate."""
    for m in MEASURED_FIRST:
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def _data_note(run: dict[str, Any], role: str) -> str:
    """Which data every number was measured on (``accuracy`` = the run's eval set)."""
    note = f"Accuracies marked {role} were measured on {run.get('eval_set') or role}"
    if run.get("test_set"):
        note += f"; those marked test on {run['test_set']} (reported, never chosen on)"
    return note + "."


def build_summary(data: RunData) -> dict[str, Any]:
    """Everything the report shows, JSON-serialisable.

    Keys: ``run`` (run.json), ``chosen`` (trial record or None), ``cost`` (the chosen
    policy's CostReport as a dict), ``layers`` (one row per layer with the chosen
    scheme/bits/sparsity, bytes, MACs and sensitivity of the chosen candidate; with a
    training-time search also ``searched``, ``search_prob`` and ``fixed_step``; with a
    learned rounding ``rounding`` and ``recon_unit``), ``reconstruction`` (the run's
    ``reconstruction.json``) or None,
    ``trials`` (with ``pareto`` flags), ``pareto`` (trial indices), ``sensitivity``
    (scores, seconds) or None, ``search`` (points), ``export`` or None.
    """
    table, policy = data.table, data.policy
    cost = estimate(table, policy, masks=data.masks)
    sens = data.sensitivity
    metric = primary_metric(sens.metrics) if sens is not None else None
    rows = []
    for info in table:
        spec = policy.get(info.name)
        lc = layer_cost(info, spec, data.masks.get(info.name))
        row: dict[str, Any] = {
            "name": info.name, "type": info.type,
            "weight_shape": "x".join(map(str, info.weight_shape)),
            "params": info.weight_params, "macs": info.macs, **_spec_cells(spec),
            "bytes": lc.total_bytes, "size_share": lc.total_bytes / max(cost.size_bytes, 1),
            "bitops": lc.bitops, "sensitivity": None}
        if data.search_layers:
            found = data.search_layers.get(info.name)
            row["searched"] = found is not None
            row["search_prob"] = (found or {}).get("w_prob")
            row["fixed_step"] = (found or {}).get("fixed_step")
        if sens is not None and spec is not None and info.name in sens.space \
                and spec in sens.space[info.name]:
            row["sensitivity"] = sens.value(metric, info.name, spec)
        rows.append(row)
    trials = [dict(t) for t in data.trials]
    front = pareto_front([t["size_bytes"] for t in trials], [t["accuracy"] for t in trials])
    for i, t in enumerate(trials):
        t["pareto"] = i in front
    recon = data.reconstruction
    if recon is not None:
        unit_of = {n: u for u in recon["units"] for n in u["layers"]}
        for row in rows:
            unit = unit_of.get(row["name"])
            row["rounding"] = recon["method"] if unit else "nearest"
            row["recon_unit"] = None if unit is None else unit["name"]
    chosen = data.chosen
    role = data.run.get("eval_role") or "validation"
    out: dict[str, Any] = {
        "run": data.run, "chosen": chosen, "cost": cost.to_dict() | {"layers": None},
        "layers": rows, "trials": trials, "pareto": front, "search": data.search,
        "export": data.export, "sensitivity": None, "rule": data.run.get("rule"),
        "guard": data.run.get("guard"), "eval_role": role,
        "data_note": _data_note(data.run, role), "reconstruction": recon}
    if sens is not None:
        out["sensitivity"] = {"primary": metric, "metrics": sens.metrics,
                              "seconds": sens.seconds, "layers": sens.space.names,
                              "labels": {n: sens.space.labels(n) for n in sens.space},
                              "scores": sens.scores}
    return out
