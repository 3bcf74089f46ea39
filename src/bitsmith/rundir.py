"""The run directory: the files every producer writes and the report reads.

Format ``bitsmith.run/1`` (documented in docs/analyze_and_report.md)::

    RUN_DIR/
      run.json          required  {"format": "bitsmith.run/1", "model", "dataset", "eval_set",
                                   "metric": "accuracy", "fp32": {"accuracy", ...} | null,
                                   "chosen": <trial name> | null, "producer", "created", "notes"}
      layers.json       required  {"format": "bitsmith.layers/1", "total_params": int,
                                   "layers": [LayerInfo.to_dict(), ...]}
      trials.jsonl      required  one evaluated policy per line, >= 1 line:
                                  {"name", "accuracy" (%), "size_bytes", "bitops"?,
                                   "avg_weight_bits"?, "compression"?, "source"?, "step"?,
                                   "policy_file"?, "fingerprint"?, ...}
      policy.yaml       required  the chosen Policy
      sensitivity.json  optional  bitsmith.allocation.Sensitivity.save(...)
      search.jsonl      optional  {"step": int, "label"?: str, <metric>: number, ...} per line
      export.json       optional  {"format": "bitsmith.export/1", "artifacts": [{"name", "format"?,
                                   "path"?, "size_bytes"?, "latency_ms"?, "agreement"? (%),
                                   "accuracy"?, ...}]}
      masks.json        optional  {"format": "bitsmith.masks/1", "layers": {name: MaskLayout
                                   fields}}: how the chosen policy's sparse layers store their
                                   actual survivors, so the report's sizes equal the packed file's
      search_layers.json optional {"format": "bitsmith.search.layers/1", "method": str,
                                   "layers": [{"layer", "w_prob"?, "fixed_step"?, ...}]}: the
                                   training-time search's per-layer decision (probability of the
                                   choice, step at which SSPS fixed the layer)
      policies/         optional  one YAML per trial policy (written by :class:`RunWriter`)

JSONL files are append-only, one ``write`` per line, so several workers (a tuner's
processes) can add trials to the same run. :class:`RunWriter` writes the format,
:func:`load_run` reads and validates it (raising :class:`RunDirError`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.atomic import atomic_write_text
from bitsmith.cost import estimate
from bitsmith.cost.sparse import MaskLayout
from bitsmith.errors import InputError
from bitsmith.graph.layer_table import LayerInfo, LayerTable
from bitsmith.policy import Policy, PolicyError

RUN_FORMAT = "bitsmith.run/1"
LAYERS_FORMAT = "bitsmith.layers/1"
EXPORT_FORMAT = "bitsmith.export/1"
MASKS_FORMAT = "bitsmith.masks/1"
SEARCH_LAYERS_FORMAT = "bitsmith.search.layers/1"
RUN_JSON, LAYERS_JSON, TRIALS_JSONL, POLICY_YAML = (
    "run.json", "layers.json", "trials.jsonl", "policy.yaml")
SENSITIVITY_JSON, SEARCH_JSONL, EXPORT_JSON = "sensitivity.json", "search.jsonl", "export.json"
MASKS_JSON, SEARCH_LAYERS_JSON = "masks.json", "search_layers.json"
REQUIRED = (RUN_JSON, LAYERS_JSON, TRIALS_JSONL, POLICY_YAML)
TRIAL_REQUIRED = ("name", "accuracy", "size_bytes")


class RunDirError(InputError):
    """A run directory is missing, incomplete or malformed.

    Attributes:
        missing: required file names that do not exist (empty for other problems).
    """

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_").lower() or "policy"


def layer_table_from_rows(rows: Sequence[Mapping[str, Any]], total_params: int) -> LayerTable:
    """Rebuild a :class:`LayerTable` from ``LayerTable.to_rows()`` output."""
    known = {f.name for f in dataclasses.fields(LayerInfo)}
    layers = []
    for row in rows:
        kw = {k: v for k, v in row.items() if k in known}
        for key in ("weight_shape", "input_shape", "output_shape"):
            kw[key] = tuple(kw[key])
        layers.append(LayerInfo(**kw))
    return LayerTable(layers, total_params)


class RunWriter:
    """Writes a ``bitsmith.run/1`` directory.

    Example (a producer evaluating policies)::

        run = RunWriter("runs/x", model="ResNet-20", dataset="CIFAR-10",
                        eval_set="test (1,000 images)", producer="bitsmith tune")
        run.write_layers(table)
        run.set_fp32(accuracy=91.5)
        run.add_trial("W4A8", policy=p, accuracy=90.3, table=table, source="uniform")
        run.choose("W4A8")                       # writes policy.yaml, marks the trial

    Args:
        run_dir: created if needed.
        model, dataset, eval_set: shown in the report's header.
        metric: name of the trials' quality number (``accuracy``, in percent).
        producer: who wrote the run (``"bitsmith demo"``, ``"bitsmith tune"``, ...).
        fresh: start new ``trials.jsonl`` / ``search.jsonl`` (``False`` appends:
            resume, or a second worker).
    """

    def __init__(self, run_dir: str | Path, *, model: str, dataset: str, eval_set: str = "",
                 metric: str = "accuracy", producer: str = "", fresh: bool = True,
                 notes: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._policies: dict[str, Policy] = {}
        self._table: LayerTable | None = None
        path = self.dir / RUN_JSON
        old = json.loads(path.read_text()) if (path.is_file() and not fresh) else {}
        self.run: dict[str, Any] = {
            "format": RUN_FORMAT, "model": model, "dataset": dataset, "eval_set": eval_set,
            "metric": metric, "fp32": old.get("fp32"), "chosen": old.get("chosen"),
            "producer": producer, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "notes": dict(notes or {})}
        if fresh:
            for name in (TRIALS_JSONL, SEARCH_JSONL):
                (self.dir / name).unlink(missing_ok=True)
        self._save_run()

    def _save_run(self) -> None:
        atomic_write_text(self.dir / RUN_JSON, json.dumps(self.run, indent=2))

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_layers(self, table: LayerTable) -> Path:
        """``layers.json`` from the model's LayerTable (also used for trial costs)."""
        self._table = table
        path = self.dir / LAYERS_JSON
        atomic_write_text(path, json.dumps({"format": LAYERS_FORMAT,
                                            "total_params": table.total_params,
                                            "layers": table.to_rows()}, indent=1))
        return path

    def set_fp32(self, accuracy: float, **extra: Any) -> None:
        """The float model's numbers (e.g. ``accuracy=91.5, size_bytes=...``)."""
        self.run["fp32"] = {"accuracy": float(accuracy), **extra}
        self._save_run()

    def add_trial(self, name: str, *, accuracy: float, policy: Policy | None = None,
                  table: LayerTable | None = None, size_bytes: int | None = None,
                  bitops: int | None = None, avg_weight_bits: float | None = None,
                  source: str = "", step: int | None = None, **extra: Any) -> dict[str, Any]:
        """Append one evaluated policy to ``trials.jsonl``.

        Costs not given are computed with :func:`bitsmith.cost.estimate` from ``policy``
        and ``table`` (or the table of :meth:`write_layers`). The policy is saved under
        ``policies/`` so that :meth:`choose` (or a later reader) can find it.

        Args:
            accuracy: top-1 accuracy in percent on the run's ``eval_set``.
            source: producer family, e.g. ``"uniform"``, ``"ilp"``, ``"tuner:tpe"``.
            step: trial number / search step (orders the search curve).
            extra: any other JSON-serialisable fields (kept in the record).
        """
        table = table or self._table
        record: dict[str, Any] = {"name": name, "accuracy": float(accuracy), "source": source}
        if policy is not None:
            if table is not None:
                cost = estimate(table, policy)
                record.update(size_bytes=cost.size_bytes, bitops=cost.bitops,
                              avg_weight_bits=cost.avg_weight_bits,
                              compression=cost.compression)
            rel = Path("policies") / f"{_slug(name)}-{policy.fingerprint()[:8]}.yaml"
            (self.dir / rel.parent).mkdir(exist_ok=True)
            policy.save(self.dir / rel)
            record.update(policy_file=rel.as_posix(), fingerprint=policy.fingerprint())
            self._policies[name] = policy
        for key, value in (("size_bytes", size_bytes), ("bitops", bitops),
                           ("avg_weight_bits", avg_weight_bits), ("step", step)):
            if value is not None:
                record[key] = value
        if "size_bytes" not in record:
            raise ValueError(f"trial {name!r}: give size_bytes, or a policy and a LayerTable")
        record.update(extra)
        self._append(TRIALS_JSONL, record)
        return record

    def choose(self, name: str, policy: Policy | None = None) -> Path:
        """Mark trial ``name`` as the chosen one and write its policy to ``policy.yaml``."""
        policy = policy or self._policies.get(name)
        if policy is None:
            raise ValueError(f"no policy known for trial {name!r}; pass policy=")
        self.run["chosen"] = name
        self._save_run()
        return policy.save(self.dir / POLICY_YAML)

    def write_sensitivity(self, sensitivity: Any) -> Path:
        """``sensitivity.json`` from a :class:`bitsmith.allocation.Sensitivity`."""
        return sensitivity.save(self.dir / SENSITIVITY_JSON)

    def log_search(self, step: int, label: str = "", **metrics: float) -> None:
        """Append one point of a search curve (e.g. ``step=3, label="tpe", best_accuracy=90.1``)."""
        record: dict[str, Any] = {"step": int(step)}
        if label:
            record["label"] = label
        record.update({k: float(v) for k, v in metrics.items()})
        self._append(SEARCH_JSONL, record)

    def write_export(self, artifacts: Sequence[Mapping[str, Any]]) -> Path:
        """``export.json``: one entry per exported artifact (size, latency, agreement, ...)."""
        path = self.dir / EXPORT_JSON
        atomic_write_text(path, json.dumps({"format": EXPORT_FORMAT,
                                    "artifacts": [dict(a) for a in artifacts]}, indent=2))
        return path

    def write_masks(self, layouts: Mapping[str, MaskLayout]) -> Path:
        """``masks.json``: the stored-mask layout of each sparse layer of the chosen policy
        (from :func:`bitsmith.compress.accounting.mask_layouts`), so the report charges the
        actual mask bytes instead of the worst case for the policy's nominal sparsity."""
        path = self.dir / MASKS_JSON
        atomic_write_text(path, json.dumps({"format": MASKS_FORMAT, "layers": {
            name: dataclasses.asdict(layout) for name, layout in layouts.items()}}, indent=2))
        return path

    def write_search_layers(self, method: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """``search_layers.json``: one record per searched layer (``"layer"`` plus e.g.
        ``"w_prob"``, the probability of the chosen candidate, and ``"fixed_step"``, the
        step at which SSPS fixed the layer; ``None`` = decided at the end)."""
        path = self.dir / SEARCH_LAYERS_JSON
        atomic_write_text(path, json.dumps({"format": SEARCH_LAYERS_FORMAT, "method": method,
                                        "layers": [dict(r) for r in rows]}, indent=1))
        return path


@dataclass
class RunData:
    """A loaded, validated run directory."""

    dir: Path
    run: dict[str, Any]
    table: LayerTable
    trials: list[dict[str, Any]]
    policy: Policy
    sensitivity: Any = None
    search: list[dict[str, Any]] = field(default_factory=list)
    export: dict[str, Any] | None = None
    masks: dict[str, MaskLayout] = field(default_factory=dict)
    search_layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def chosen(self) -> dict[str, Any] | None:
        """The chosen trial record (``run.json`` ``chosen``; else the one with the
        policy's fingerprint), or ``None``."""
        name = self.run.get("chosen")
        for t in self.trials:
            if name is not None and t["name"] == name:
                return t
        fp = self.policy.fingerprint()
        return next((t for t in self.trials if t.get("fingerprint") == fp), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunDirError(f"{path}, line {i}: not valid JSON ({err})") from None
        if not isinstance(rec, dict):
            raise RunDirError(f"{path}, line {i}: expected a JSON object")
        out.append(rec)
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read and validate a run directory.

    Raises:
        RunDirError: the directory does not exist, a required file is missing
            (``.missing`` lists them and the message names them), or a file is
            malformed (the message names the file, line and field).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"run directory {d} does not exist (or is not a directory)",
                          list(REQUIRED))
    missing = [name for name in REQUIRED if not (d / name).is_file()]
    if missing:
        raise RunDirError(f"run directory {d} is incomplete: missing {', '.join(missing)} "
                          f"(a run needs {', '.join(REQUIRED)})", missing)
    run = _read_json(d / RUN_JSON)
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise RunDirError(f"{d / RUN_JSON}: format must be {RUN_FORMAT!r}, got "
                          f"{run.get('format') if isinstance(run, dict) else run!r}")
    layers = _read_json(d / LAYERS_JSON)
    try:
        table = layer_table_from_rows(layers["layers"], layers["total_params"])
    except (KeyError, TypeError) as err:
        raise RunDirError(f"{d / LAYERS_JSON}: bad layer table ({err!r}); expected "
                          "{'total_params': int, 'layers': LayerTable.to_rows()}") from None
    trials = _read_jsonl(d / TRIALS_JSONL)
    if not trials:
        raise RunDirError(f"{d / TRIALS_JSONL} has no trial; a run needs at least one "
                          "evaluated policy")
    for i, t in enumerate(trials, 1):
        lack = [k for k in TRIAL_REQUIRED if k not in t]
        if lack:
            raise RunDirError(f"{d / TRIALS_JSONL}, line {i}: missing field(s) {lack}")
    try:
        policy = Policy.load(d / POLICY_YAML)
        policy.check_layers(table.names)
    except PolicyError as err:
        raise RunDirError(f"{d / POLICY_YAML}: {err}") from None
    sens = None
    if (d / SENSITIVITY_JSON).is_file():
        from bitsmith.allocation.scores import Sensitivity

        try:
            sens = Sensitivity.from_dict(_read_json(d / SENSITIVITY_JSON), table)
        except (KeyError, ValueError, PolicyError) as err:
            raise RunDirError(f"{d / SENSITIVITY_JSON}: {err}") from None
    search = _read_jsonl(d / SEARCH_JSONL) if (d / SEARCH_JSONL).is_file() else []
    export = _read_json(d / EXPORT_JSON) if (d / EXPORT_JSON).is_file() else None
    if export is not None and not isinstance(export.get("artifacts"), list):
        raise RunDirError(f"{d / EXPORT_JSON}: expected {{'artifacts': [...]}}")
    masks = _read_masks(d / MASKS_JSON, table) if (d / MASKS_JSON).is_file() else {}
    search_layers = (_read_search_layers(d / SEARCH_LAYERS_JSON, table)
                     if (d / SEARCH_LAYERS_JSON).is_file() else {})
    return RunData(d, run, table, trials, policy, sens, search, export, masks, search_layers)


def _read_search_layers(path: Path, table: LayerTable) -> dict[str, dict[str, Any]]:
    raw = _read_json(path)
    rows = raw.get("layers") if isinstance(raw, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "layer" in r
                                             for r in rows):
        raise RunDirError(f"{path}: expected {{'format': {SEARCH_LAYERS_FORMAT!r}, "
                          "'layers': [{'layer': name, ...}, ...]}")
    _check_layers(path, [r["layer"] for r in rows], table)
    return {r["layer"]: r for r in rows}


def _check_layers(path: Path, names: list[str], table: LayerTable) -> None:
    """Raise :class:`RunDirError` naming the entries of an optional per-layer file that are
    not layers of the run's layer table."""
    known = set(table.names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RunDirError(f"{path}: layer(s) {unknown[:3]} not in the run's layer table")


def _read_masks(path: Path, table: LayerTable) -> dict[str, MaskLayout]:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), dict):
        raise RunDirError(f"{path}: expected {{'format': {MASKS_FORMAT!r}, 'layers': {{...}}}}")
    _check_layers(path, list(raw["layers"]), table)
    out = {}
    for name, rec in raw["layers"].items():
        try:
            out[name] = MaskLayout(**rec)
        except TypeError as err:
            raise RunDirError(f"{path}, layer {name!r}: bad mask layout ({err})") from None
    return out
