"""The run directory: the files every producer writes and the report reads.

Format ``bitsmith.run/1`` (documented in docs/analyze_and_report.md)::

    RUN_DIR/
      run.json          required  {"format": "bitsmith.run/1", "model", "dataset", "eval_set",
                                   "eval_role": "validation" | "test" (what "accuracy" of
                                   fp32 and of every trial was measured on; default
                                   validation), "metric": "accuracy",
                                   "fp32": {"accuracy", ...} | null,
                                   "chosen": <trial name> | null, "rule": <how the chosen
                                   trial was chosen> | null, "guard": <validation guard> |
                                   null, "test_set": <label> | null (trials may then carry
                                   "test_accuracy"), "producer", "created", "notes"}
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

JSONL files are append-only, one locked ``write`` per line
(:func:`bitsmith.atomic.append_line`), so several workers (a tuner's processes) can add
trials to the same run; a last line without its newline (a write cut short) is ignored by
the reader. Every other file is replaced atomically. :class:`RunWriter` writes the format,
:func:`load_run` reads and validates it (raising :class:`RunDirError`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.atomic import append_line, atomic_write_text
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
RECONSTRUCTION_JSON, RECONSTRUCTION_FORMAT = "reconstruction.json", "bitsmith.reconstruction/1"
UNIT_FIELDS = ("name", "layers", "iterations", "loss_before", "loss_after", "seconds", "cached")
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
                 notes: Mapping[str, Any] | None = None, eval_role: str = "validation",
                 guard: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._policies: dict[str, Policy] = {}
        self._table: LayerTable | None = None
        path = self.dir / RUN_JSON
        old = _read_json(path) if (path.is_file() and not fresh) else {}
        if not isinstance(old, dict):
            raise RunDirError(f"{path}: expected a JSON object; delete it or start afresh")
        self.run: dict[str, Any] = {
            "format": RUN_FORMAT, "model": model, "dataset": dataset, "eval_set": eval_set,
            "eval_role": eval_role, "metric": metric, "fp32": old.get("fp32"),
            "chosen": old.get("chosen"), "rule": old.get("rule"),
            "guard": dict(guard) if guard is not None else old.get("guard"),
            "test_set": old.get("test_set"), "producer": producer,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": dict(notes or {})}
        if fresh:
            for name in (TRIALS_JSONL, SEARCH_JSONL):
                (self.dir / name).unlink(missing_ok=True)
        self._save_run()

    def _save_run(self) -> None:
        atomic_write_text(self.dir / RUN_JSON, json.dumps(self.run, indent=2))

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        append_line(self.dir / name, json.dumps(record))

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
        self.run["fp32"] = {**(self.run["fp32"] or {}), "accuracy": float(accuracy), **extra}
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

    def set_test_set(self, label: str, fp32_accuracy: float | None = None) -> None:
        """Name the test set whose numbers trials carry as ``test_accuracy`` (and the float
        model's score on it)."""
        self.run["test_set"] = label
        if fp32_accuracy is not None:
            self.run["fp32"] = {**(self.run["fp32"] or {}), "test_accuracy": float(fp32_accuracy)}
        self._save_run()

    def choose(self, name: str, policy: Policy | None = None, rule: str | None = None) -> Path:
        """Mark trial ``name`` as the chosen one (chosen by ``rule``, one sentence) and write
        its policy to ``policy.yaml``."""
        policy = policy or self._policies.get(name)
        if policy is None:
            raise ValueError(f"no policy known for trial {name!r}; pass policy=")
        self.run["chosen"] = name
        if rule is not None:
            self.run["rule"] = rule
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
        return write_export(self.dir, artifacts)

    def write_masks(self, layouts: Mapping[str, MaskLayout]) -> Path:
        """``masks.json``: the stored-mask layout of each sparse layer of the chosen policy
        (from :func:`bitsmith.compress.accounting.mask_layouts`), so the report charges the
        actual mask bytes instead of the worst case for the policy's nominal sparsity."""
        path = self.dir / MASKS_JSON
        atomic_write_text(path, json.dumps({"format": MASKS_FORMAT, "layers": {
            name: dataclasses.asdict(layout) for name, layout in layouts.items()}}, indent=2))
        return path

    def write_reconstruction(self, report: Any) -> Path:
        """``reconstruction.json`` (see :func:`write_reconstruction`)."""
        return write_reconstruction(self.dir, report)

    def write_search_layers(self, method: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """``search_layers.json``: one record per searched layer (``"layer"`` plus e.g.
        ``"w_prob"``, the probability of the chosen candidate, and ``"fixed_step"``, the
        step at which SSPS fixed the layer; ``None`` = decided at the end)."""
        path = self.dir / SEARCH_LAYERS_JSON
        atomic_write_text(path, json.dumps({"format": SEARCH_LAYERS_FORMAT, "method": method,
                                        "layers": [dict(r) for r in rows]}, indent=1))
        return path


def write_reconstruction(run_dir: str | Path, report: Any) -> Path:
    """``reconstruction.json``: how the chosen policy's rounding was learned (a
    :class:`bitsmith.reconstruct.ReconstructionReport`: method, settings, wall time and one
    record per layer or block with its iterations and loss before / after)."""
    path = Path(run_dir) / RECONSTRUCTION_JSON
    atomic_write_text(path, json.dumps({"format": RECONSTRUCTION_FORMAT, **report.to_dict()},
                                       indent=1))
    return path


def write_export(run_dir: str | Path, artifacts: Sequence[Mapping[str, Any]]) -> Path:
    """``export.json`` of a written run: one entry per exported artifact (size, latency,
    agreement, ...)."""
    path = Path(run_dir) / EXPORT_JSON
    atomic_write_text(path, json.dumps({"format": EXPORT_FORMAT,
                                        "artifacts": [dict(a) for a in artifacts]}, indent=2))
    return path


def record_test(run_dir: str | Path, label: str, fp32: float | None, chosen: float) -> None:
    """Add test-set numbers to a written run: ``run.json`` ``"test_set"`` (the label),
    ``"test": {"fp32", "chosen"}`` (the chosen trial's and the float model's score on it).
    The trials' ``accuracy`` stays the validation score the choice was made on."""
    path = Path(run_dir) / RUN_JSON
    run = _read_json(path)
    run["test_set"] = label
    run["test"] = {"fp32": fp32, "chosen": chosen}
    atomic_write_text(path, json.dumps(run, indent=2))


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
    reconstruction: dict[str, Any] | None = None

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


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not UTF-8 text (binary garbage?); restore the file or "
                          "re-run the producer") from None
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror or err})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; a last line without its newline that does not parse is a
    write cut short (a full disk, a power loss) and is skipped."""
    text = _read_text(path)
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            if i == len(lines):          # torn last line: never completed, not a record
                continue
            raise RunDirError(f"{path}, line {i}: not valid JSON ({err})") from None
        if not isinstance(rec, dict):
            raise RunDirError(f"{path}, line {i}: expected a JSON object")
        out.append(rec)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# trial fields whose type the report relies on: name -> (check, what to write)
_TRIAL_TYPES = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "accuracy": (lambda v: _is_number(v) and not math.isinf(v), "a number (percent)"),
    "size_bytes": (lambda v: _is_number(v) and math.isfinite(v) and v >= 0,
                   "a number of bytes >= 0"),
    "bitops": (lambda v: v is None or (_is_number(v) and math.isfinite(v)), "a number"),
    "avg_weight_bits": (lambda v: v is None or _is_number(v), "a number"),
    "compression": (lambda v: v is None or _is_number(v), "a number"),
    "step": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
             "an integer"),
    "source": (lambda v: v is None or isinstance(v, str), "a string"),
    "policy_file": (lambda v: v is None or isinstance(v, str), "a string"),
    "fingerprint": (lambda v: v is None or isinstance(v, str), "a string"),
}
_RUN_STRINGS = ("model", "dataset", "eval_set", "metric", "producer", "created")


def _check_trial(path: Path, line: int, trial: Mapping[str, Any]) -> None:
    lack = [k for k in TRIAL_REQUIRED if k not in trial]
    if lack:
        raise RunDirError(f"{path}, line {line}: missing field(s) {lack}")
    for key, (ok, what) in _TRIAL_TYPES.items():
        if key in trial and not ok(trial[key]):
            raise RunDirError(f"{path}, line {line}: {key!r} must be {what}, got "
                              f"{trial[key]!r}; fix the line or re-run the producer")


def _check_run(path: Path, run: Mapping[str, Any]) -> None:
    for key in _RUN_STRINGS:
        if run.get(key) is not None and not isinstance(run[key], str):
            raise RunDirError(f"{path}: {key!r} must be a string, got {run[key]!r}")
    fp32 = run.get("fp32")
    if fp32 is not None and not (isinstance(fp32, dict) and _is_number(fp32.get("accuracy"))):
        raise RunDirError(f"{path}: 'fp32' must be null or {{'accuracy': number, ...}}, got "
                          f"{fp32!r}")
    if run.get("chosen") is not None and not isinstance(run["chosen"], str):
        raise RunDirError(f"{path}: 'chosen' must be a trial name (string) or null")
    if not isinstance(run.get("notes", {}), dict):
        raise RunDirError(f"{path}: 'notes' must be a JSON object")


def _check_layer_rows(path: Path, layers: Any) -> None:
    """Types of ``layers.json`` (so a malformed table is refused here, not deep in a report)."""
    if not isinstance(layers, dict) or not isinstance(layers.get("layers"), list) or \
            not isinstance(layers.get("total_params"), int) or \
            isinstance(layers.get("total_params"), bool):
        raise RunDirError(f"{path}: expected {{'format': {LAYERS_FORMAT!r}, 'total_params': "
                          "int, 'layers': [...]}")
    ints = [f.name for f in dataclasses.fields(LayerInfo) if f.type in ("int", int)]
    shapes = ("weight_shape", "input_shape", "output_shape")
    for i, row in enumerate(layers["layers"]):
        where = f"{path}, layer {i}"
        if not isinstance(row, dict):
            raise RunDirError(f"{where}: expected an object, got {row!r}")
        for key in ("name", "type"):
            if not isinstance(row.get(key), str):
                raise RunDirError(f"{where}: {key!r} must be a string, got {row.get(key)!r}")
        for key in ints:
            if key in row and (isinstance(row[key], bool) or not isinstance(row[key], int)):
                raise RunDirError(f"{where}: {key!r} must be an integer, got {row[key]!r}")
        for key in shapes:
            value = row.get(key)
            if not isinstance(value, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) for d in value):
                raise RunDirError(f"{where}: {key!r} must be a list of integers, got {value!r}")


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
    _check_run(d / RUN_JSON, run)
    layers = _read_json(d / LAYERS_JSON)
    _check_layer_rows(d / LAYERS_JSON, layers)
    try:
        table = layer_table_from_rows(layers["layers"], layers["total_params"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{d / LAYERS_JSON}: bad layer table ({err!r}); expected "
                          "{'total_params': int, 'layers': LayerTable.to_rows()}") from None
    trials = _read_jsonl(d / TRIALS_JSONL)
    if not trials:
        raise RunDirError(f"{d / TRIALS_JSONL} has no trial; a run needs at least one "
                          "evaluated policy")
    for i, t in enumerate(trials, 1):
        _check_trial(d / TRIALS_JSONL, i, t)
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
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise RunDirError(f"{d / SENSITIVITY_JSON}: {err}") from None
    search = _read_jsonl(d / SEARCH_JSONL) if (d / SEARCH_JSONL).is_file() else []
    for i, point in enumerate(search, 1):
        _check_search_point(d / SEARCH_JSONL, i, point)
    export = _read_json(d / EXPORT_JSON) if (d / EXPORT_JSON).is_file() else None
    if export is not None and not (isinstance(export, dict) and isinstance(
            export.get("artifacts"), list) and all(isinstance(a, dict) and isinstance(
                a.get("name"), str) for a in export["artifacts"])):
        raise RunDirError(f"{d / EXPORT_JSON}: expected {{'artifacts': [{{'name': str, ...}}, "
                          "...]}")
    masks = _read_masks(d / MASKS_JSON, table) if (d / MASKS_JSON).is_file() else {}
    search_layers = (_read_search_layers(d / SEARCH_LAYERS_JSON, table)
                     if (d / SEARCH_LAYERS_JSON).is_file() else {})
    recon = (_read_reconstruction(d / RECONSTRUCTION_JSON, table)
             if (d / RECONSTRUCTION_JSON).is_file() else None)
    return RunData(d, run, table, trials, policy, sens, search, export, masks, search_layers,
                   recon)


def _read_reconstruction(path: Path, table: LayerTable) -> dict[str, Any]:
    """``reconstruction.json``, checked: its format, one record per unit with every field,
    only layers of the run's table."""
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != RECONSTRUCTION_FORMAT or \
            not isinstance(data.get("units"), list):
        raise RunDirError(f"{path}: expected {{'format': {RECONSTRUCTION_FORMAT!r}, 'units': "
                          "[...]}")
    for i, unit in enumerate(data["units"], 1):
        missing = [f for f in UNIT_FIELDS if not isinstance(unit, dict) or f not in unit]
        if missing:
            raise RunDirError(f"{path}: unit {i} lacks {', '.join(missing)}")
        unknown = [n for n in unit["layers"] if n not in table]
        if unknown:
            raise RunDirError(f"{path}: unit {i} names layers not in the model: {unknown[:3]}")
    return data


def _check_search_point(path: Path, line: int, point: Mapping[str, Any]) -> None:
    if isinstance(point.get("step"), bool) or not isinstance(point.get("step"), int):
        raise RunDirError(f"{path}, line {line}: 'step' must be an integer, got "
                          f"{point.get('step')!r}")
    for key, value in point.items():
        if key == "label":
            if not isinstance(value, str):
                raise RunDirError(f"{path}, line {line}: 'label' must be a string")
        elif value is not None and not _is_number(value):
            raise RunDirError(f"{path}, line {line}: {key!r} must be a number, got {value!r}")


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
    unknown = [n for n in names if not isinstance(n, str) or n not in known]
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
            if not isinstance(rec, dict) or not all(_is_number(v) or isinstance(v, str)
                                                    for v in rec.values()):
                raise TypeError(f"expected an object of numbers, got {rec!r}")
            out[name] = MaskLayout(**rec)
        except TypeError as err:
            raise RunDirError(f"{path}, layer {name!r}: bad mask layout ({err})") from None
    return out
