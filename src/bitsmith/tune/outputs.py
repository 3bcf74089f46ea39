"""What a tuning run leaves in its output folder.

=========================  ===============================================================
file                       content
=========================  ===============================================================
``best_policy.yaml/json``  the best Policy (rewritten after every trial that improves it)
``best.json``              its configuration, measurement, objective, trial number
``model.safetensors``      state dict of the quantized model of the best configuration
                           (BN-folded weights + quantizer scales; no pickle); load it into
                           ``bitsmith.quantize(model, policy, ...)``
``trials.jsonl/.csv``      one line per trial: state, configuration, accuracy, drop, size...
``pareto.png``             accuracy vs cost of every completed trial, front and best marked
``transfer.json``          measurements for the cost model of a later study (transfer)
``summary.json``           the objective, counts per state, best / closest, Pareto front
=========================  ===============================================================
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from bitsmith.tune.evaluator import Evaluator
from bitsmith.tune.objectives import cost_value
from bitsmith.tune.results import TrialRecord, TuneResult, _measurement
from bitsmith.tune.transfer import records_from_trials, save_transfer


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _best_payload(result: TuneResult) -> dict[str, Any]:
    pick = result.best or result.closest
    return {"feasible": result.feasible, "objective": result.objective.to_dict(),
            "study": result.study_name, "fp32_accuracy": result.fp32_accuracy,
            "trial": None if pick is None else pick.number,
            "config": None if pick is None else pick.config,
            "measurement": None if pick is None else pick.measurement}


def write_best(result: TuneResult, evaluator: Evaluator, out_dir: Path) -> dict[str, Path]:
    """Write the best policy (YAML and JSON) and ``best.json``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"best": out_dir / "best.json"}
    _atomic_write(files["best"], json.dumps(_best_payload(result), indent=2))
    if result.best is not None:
        policy = evaluator.policy(result.best.config)
        for ext in ("yaml", "json"):
            path = out_dir / f"best_policy.{ext}"
            _atomic_write(path, policy.to_yaml() if ext == "yaml" else policy.to_json())
            files[f"policy_{ext}"] = path
    return files


def write_trials(trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
    """``trials.jsonl`` (full records) and ``trials.csv`` (flat columns)."""
    rows = [t.to_dict() for t in trials]
    jsonl = out_dir / "trials.jsonl"
    _atomic_write(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    flat = [{**{k: v for k, v in r.items() if k != "config"},
             **{f"c.{k}": v for k, v in r["config"].items()}} for r in rows]
    cols: list[str] = []
    for r in flat:
        cols += [c for c in r if c not in cols]
    path = out_dir / "trials.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat)
    return {"trials_jsonl": jsonl, "trials_csv": path}


def plot_pareto(result: TuneResult, path: Path) -> Path:
    """Scatter accuracy vs cost of every completed trial; front as a line, best as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.objective.metric
    scale, unit = {"size": (1 / 1024, "KiB"), "bitops": (1e-9, "GBitOPs"),
                   "latency": (1.0, "ms")}[metric]
    done = [t for t in result.trials if t.state == "COMPLETE"
            and t.measurement.get("accuracy") is not None]

    def xy(ts: list[TrialRecord]) -> tuple[list[float], list[float]]:
        return ([cost_value(_measurement(t.measurement), metric) * scale for t in ts],
                [t.measurement["accuracy"] for t in ts])

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(*xy(done), s=14, alpha=0.5, label=f"trials ({len(done)})")
    if result.front:
        ax.plot(*xy(result.front), "-o", color="C3", ms=4, label="Pareto front")
    if result.best is not None:
        ax.scatter(*xy([result.best]), marker="*", s=180, color="C2", zorder=5, label="best")
    ax.axhline(result.fp32_accuracy, color="gray", ls="--", lw=1, label="FP32")
    if result.objective.kind == "min_cost":
        ax.axhline(result.fp32_accuracy - float(result.objective.tolerance), color="gray",
                   ls=":", lw=1, label="tolerance")
    ax.set_xlabel(f"{metric} ({unit})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{result.study_name}: {result.objective.describe()}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: TuneResult, evaluator: Evaluator, out_dir: Path,
                  save_model: bool = True) -> dict[str, Path]:
    """Write every output (see the module docstring); returns name -> path."""
    files = write_best(result, evaluator, out_dir)
    files.update(write_trials(result.trials, out_dir))
    files["pareto"] = plot_pareto(result, out_dir / "pareto.png")
    summary = {**_best_payload(result), "counts": result.counts(), "budget": result.budget,
               "stopped": result.stopped, "storage": result.storage,
               "front": [{"trial": t.number, "accuracy": t.measurement.get("accuracy"),
                          "size_bytes": t.measurement.get("size_bytes"),
                          "bitops": t.measurement.get("bitops"), "config": t.config}
                         for t in result.front]}
    records = records_from_trials(result.trials, getattr(evaluator, "descriptors", {}),
                                  evaluator.layer_names, getattr(evaluator, "weight_params", {}))
    files["transfer"] = save_transfer(records, out_dir / "transfer.json")
    files["summary"] = out_dir / "summary.json"
    _atomic_write(files["summary"], json.dumps(summary, indent=2))
    state_dict = getattr(evaluator, "state_dict", None)
    if save_model and result.best is not None and state_dict is not None:
        from safetensors.torch import save_file

        path = out_dir / "model.safetensors"
        policy = evaluator.policy(result.best.config)
        save_file(state_dict(result.best.config), str(path),
                  metadata={"format": "bitsmith.tune/1", "policy": policy.to_json(),
                            "config": json.dumps(result.best.config)})
        files["model"] = path
    return files
