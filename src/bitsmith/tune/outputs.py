"""What a tuning run leaves in its output folder.

The folder is a ``bitsmith.run/1`` run directory (:class:`bitsmith.report.RunWriter`),
so ``bitsmith report OUT_DIR`` works on it, plus the tuner's own files:

=========================  ===============================================================
file                       content
=========================  ===============================================================
``run.json``               run format header: model, validation set, FP32 accuracy, the
                           chosen (best) trial, the objective and strategy in ``notes``
``layers.json``            the model's layer table
``trials.jsonl``           one line per *completed* trial (``name`` ``"trial <n>"``,
                           validation ``accuracy``, ``size_bytes``, ``bitops``, ...,
                           ``source`` ``"tuner:<strategy>"``, ``step`` = trial number,
                           plus ``config``, ``state``, ``violation``, ``feasible`` and the
                           measurement as ``m.<field>``); appended as trials finish
``policy.yaml``            the chosen (best, else closest) configuration's Policy
``search.jsonl``           per completed trial: its accuracy and compression and the best
                           so far (the report's search curve)
``policies/``              one Policy YAML per completed trial
``best_policy.yaml/json``  the best Policy (rewritten after every trial that improves it)
``best.json``              its configuration, measurement, objective, trial number
``model.safetensors``      state dict of the quantized model of the best configuration
                           (BN-folded weights, bias-corrected when the configuration
                           says so, + quantizer scales; no pickle); load it into
                           ``bitsmith.quantize(model, policy, ...)``
``trials.csv``             every trial, any state (pruned, failed, waiting too), flat
``pareto.png``             accuracy vs cost of every completed trial, front and best marked
``transfer.json``          measurements for the cost model of a later study (transfer)
``summary.json``           the objective, counts per state, best / closest, Pareto front
=========================  ===============================================================

Several workers may share one folder: each appends its finished trials to
``trials.jsonl`` / ``search.jsonl`` (one locked ``write`` per line), and
when a worker ends it rewrites the run files from the study (the source of truth)
into a private folder and moves them into place with ``os.replace``: a reader never
sees a half-written file, and the last worker to finish leaves the complete run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitsmith.atomic import atomic_path, atomic_write_text
from bitsmith.tune.errors import TuneError
from bitsmith.tune.evaluator import Evaluator, Measurement
from bitsmith.tune.objectives import cost_value
from bitsmith.tune.results import TrialRecord, TuneResult
from bitsmith.tune.transfer import records_from_trials, save_transfer


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
    atomic_write_text(files["best"], json.dumps(_best_payload(result), indent=2))
    if result.best is not None:
        policy = evaluator.policy(result.best.config)
        for ext in ("yaml", "json"):
            path = out_dir / f"best_policy.{ext}"
            atomic_write_text(path, policy.to_yaml() if ext == "yaml" else policy.to_json())
            files[f"policy_{ext}"] = path
    return files


def write_trials(trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
    """``trials.csv``: every trial (any state), flat columns."""
    rows = [t.to_dict() for t in trials]
    flat = [{**{k: v for k, v in r.items() if k != "config"},
             **{f"c.{k}": v for k, v in r["config"].items()}} for r in rows]
    cols: list[str] = []
    for r in flat:
        cols += [c for c in r if c not in cols]
    path = out_dir / "trials.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat)
    return {"trials_csv": path}


# ------------------------------------------------------------------ run directory
def _usable(record: TrialRecord) -> bool:
    return (record.state == "COMPLETE" and bool(record.measurement)
            and record.measurement.get("accuracy") is not None)


def _trial_name(number: int) -> str:
    return f"trial {number}"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunLog:
    """The ``bitsmith.run/1`` side of a tuning run (a :class:`~bitsmith.report.RunWriter`).

    Args:
        out_dir: the run directory.
        evaluator: needs ``table`` (a LayerTable) and ``policy(config)``.
        objective, strategy: recorded in ``run.json`` and used for the search curve.
        fp32_accuracy: the float model's validation accuracy.
        meta: ``model``, ``dataset``, ``eval_set`` labels for the report header.
        fresh: start new trial and search logs (a new study); ``False`` appends.
    """

    def __init__(self, out_dir: Path, evaluator: Evaluator, objective: Any, strategy: str,
                 fp32_accuracy: float, meta: Mapping[str, Any] | None = None,
                 fresh: bool = False) -> None:

        self.evaluator = evaluator
        self.objective = objective
        self.strategy = strategy
        self.fp32_accuracy = float(fp32_accuracy)
        meta = dict(meta or {})
        model = getattr(evaluator, "model", None)
        images = getattr(evaluator, "bounds", [None])[-1]
        self.kwargs: dict[str, Any] = {
            "model": str(meta.get("model", type(model).__name__ if model is not None else "")),
            "dataset": str(meta.get("dataset", "")),
            "eval_set": str(meta.get("eval_set", f"validation ({images} images)" if images
                                     else "validation")),
            "producer": "bitsmith tune", "guard": meta.get("guard"),
            "notes": {"objective": objective.describe(), "strategy": strategy,
                      **{k: v for k, v in meta.items()
                         if k not in ("model", "dataset", "eval_set", "guard")}}}
        self.writer = self._open(out_dir, fresh)

    @staticmethod
    def supported(evaluator: Evaluator) -> bool:
        """Whether the evaluator exposes a LayerTable (needed for ``layers.json``)."""
        return getattr(evaluator, "table", None) is not None

    def _open(self, run_dir: Path, fresh: bool):
        from bitsmith.rundir import RunWriter

        writer = RunWriter(run_dir, fresh=fresh, **self.kwargs)
        table = getattr(self.evaluator, "table", None)
        if table is None:
            raise TuneError("a run directory needs an evaluator with a LayerTable (.table)")
        writer.write_layers(table)
        writer.set_fp32(self.fp32_accuracy)
        return writer

    def _fields(self, record: TrialRecord) -> dict[str, Any]:
        m = record.measurement
        return {"number": record.number, "state": record.state, "config": record.config,
                "values": record.values, "violation": record.violation,
                "feasible": record.feasible, "seconds": record.seconds,
                **{f"m.{k}": _finite(v) for k, v in m.items()}}

    def _search_point(self, record: TrialRecord, best: TrialRecord | None) -> dict[str, float]:
        m = record.measurement
        point = {"accuracy": float(m["accuracy"]), "compression": float(m["compression"])}
        if best is not None:
            bm = best.measurement
            key = "best_accuracy" if self.objective.kind != "min_cost" else "best_compression"
            point[key] = float(bm["accuracy"] if key == "best_accuracy" else bm["compression"])
        return point

    def improves(self, record: TrialRecord, best: TrialRecord | None) -> bool:
        """Whether ``record`` is a better best-so-far than ``best`` (for the search curve)."""
        if not _usable(record):
            return False
        if self.objective.kind == "pareto":
            return best is None or (record.measurement["accuracy"]
                                    > best.measurement["accuracy"])
        if not record.feasible or not record.values:
            return False
        return best is None or self.objective.better(record.value, best.value)

    def _add(self, writer: Any, record: TrialRecord, best: TrialRecord | None) -> None:
        policy = self.evaluator.policy(record.config)
        writer.add_trial(_trial_name(record.number), accuracy=float(
            record.measurement["accuracy"]), policy=policy, source=f"tuner:{self.strategy}",
            step=record.number, **self._fields(record))
        writer.log_search(record.number, self.strategy, **self._search_point(record, best))

    def append(self, record: TrialRecord, best: TrialRecord | None) -> None:
        """Append one finished trial (completed ones only; others are in ``trials.csv``)."""
        if _usable(record):
            self._add(self.writer, record, best)

    def rewrite(self, result: TuneResult, out_dir: Path) -> dict[str, Path]:
        """Rewrite the run files from the whole study, atomically file by file."""
        from bitsmith.rundir import (
            LAYERS_JSON,
            POLICY_YAML,
            RUN_JSON,
            SEARCH_JSONL,
            TRIALS_JSONL,
        )

        done = sorted((t for t in result.trials if _usable(t)), key=lambda t: t.number)
        pick = result.best or result.closest
        if not done or pick is None:
            return {}
        tmp = out_dir / f".run-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            writer = self._open(tmp, fresh=True)
            best: TrialRecord | None = None
            for t in done:
                if self.improves(t, best):
                    best = t
                self._add(writer, t, best)
            writer.choose(_trial_name(pick.number), rule=self.objective.rule())
            (out_dir / "policies").mkdir(exist_ok=True)
            for f in (tmp / "policies").iterdir():
                os.replace(f, out_dir / "policies" / f.name)
            files = {"layers": LAYERS_JSON, "trials_jsonl": TRIALS_JSONL,
                     "search": SEARCH_JSONL, "policy": POLICY_YAML, "run": RUN_JSON}
            for name in files.values():          # run.json last: it names the chosen trial
                os.replace(tmp / name, out_dir / name)
            return {key: out_dir / name for key, name in files.items()}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


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
        return ([cost_value(Measurement.from_dict(t.measurement), metric) * scale for t in ts],
                [t.measurement["accuracy"] for t in ts])

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(*xy(done), s=14, alpha=0.5, label=f"trials ({len(done)})")
    if result.front:
        ax.plot(*xy(result.front), "-o", color="C3", ms=4, label="Pareto front")
    if result.best is not None:
        ax.scatter(*xy([result.best]), marker="*", s=180, color="C2", zorder=5, label="best")
    ax.axhline(result.fp32_accuracy, color="gray", ls="--", lw=1, label="FP32")
    if result.objective.kind == "min_cost":
        ax.axhline(result.fp32_accuracy - result.objective.max_drop, color="gray",
                   ls=":", lw=1, label="tolerance")
    ax.set_xlabel(f"{metric} ({unit})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{result.study_name}: {result.objective.describe()}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_outputs(result: TuneResult, evaluator: Evaluator, out_dir: Path,
                  save_model: bool = True, run_log: RunLog | None = None) -> dict[str, Path]:
    """Write every output (see the module docstring); returns name -> path."""
    files = write_best(result, evaluator, out_dir)
    files.update(write_trials(result.trials, out_dir))
    if run_log is not None:
        files.update(run_log.rewrite(result, out_dir))
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
    atomic_write_text(files["summary"], json.dumps(summary, indent=2))
    state_dict = getattr(evaluator, "state_dict", None)
    if save_model and result.best is not None and state_dict is not None:
        from safetensors.torch import save_file

        path = out_dir / "model.safetensors"
        policy = evaluator.policy(result.best.config)
        with atomic_path(path) as tmp:
            save_file(state_dict(result.best.config), str(tmp),
                      metadata={"format": "bitsmith.tune/1", "policy": policy.to_json(),
                                "config": json.dumps(result.best.config),
                                "bias_correction": json.dumps(bool(
                                    result.best.config.get("bias_correction", False)))})
        files["model"] = path
    return files
