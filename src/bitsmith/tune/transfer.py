"""Transfer learning files: measurements of earlier studies that seed a new study's cost model.

Every tuning run writes ``transfer.json`` (format ``bitsmith.tune.transfer/1``)::

    {"format": "bitsmith.tune.transfer/1",
     "records": [{"config": {...}, "drop": 0.31, "descriptors": {...},
                  "layer_names": [...], "weight_params": {...}}, ...]}

``--transfer`` / ``tune(transfer=...)`` accept such files (several may be
combined) and also the evaluation tables of ``benchmarks/tune_table.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bitsmith.atomic import atomic_write_text
from bitsmith.config import ConfigError, read_structured_file
from bitsmith.tune.errors import TuneError, check_keys
from bitsmith.tune.samplers import TransferRecord

FORMAT = "bitsmith.tune.transfer/1"


def records_from_trials(trials: Sequence[Any], descriptors: Mapping[str, float],
                        layer_names: Sequence[str], weight_params: Mapping[str, int]
                        ) -> list[TransferRecord]:
    """Transfer records of the completed, fully evaluated trials of a study."""
    out = []
    for t in trials:
        m = t.measurement
        if t.state != "COMPLETE" or not m or m.get("drop") is None or m.get("pruned"):
            continue
        out.append(TransferRecord(t.config, float(m["drop"]), dict(descriptors),
                                  list(layer_names), dict(weight_params)))
    return out


def save_transfer(records: Sequence[TransferRecord], path: str | Path) -> Path:
    """Write records as a ``transfer.json`` file."""
    path = Path(path)
    atomic_write_text(path, json.dumps({"format": FORMAT,
                                        "records": [r.to_dict() for r in records]}))
    return path


def load_transfer(path: str | Path) -> list[TransferRecord]:
    """Read a ``transfer.json`` or a ``benchmarks/tune_table.py`` table.

    Raises:
        TuneError: the file is missing, unreadable (binary garbage, invalid JSON), has
            neither format, or a record has a field of the wrong type (named).
    """
    try:
        data = read_structured_file(path, "transfer file")
    except ConfigError as err:
        raise TuneError(str(err)) from None
    where = f"transfer file {path}"
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        check_keys(data, ("format", "records"), where)
        records = data.get("records", [])
        if not isinstance(records, list):
            raise TuneError(f"{where}: 'records' must be a list")
        return [_record(r, f"{where}, record {i}") for i, r in enumerate(records)]
    if isinstance(data, Mapping) and "rows" in data and "descriptors" in data:
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise TuneError(f"{where}: 'rows' must be a list of objects")
        shared = {k: data.get(k) for k in ("descriptors", "layer_names", "weight_params")
                  if data.get(k) is not None}
        return [_record({"config": r.get("config"), "drop": r.get("drop"), **shared},
                        f"{where}, row {i}") for i, r in enumerate(rows)]
    raise TuneError(f"{path} is neither a bitsmith transfer file ({FORMAT}) nor a tune table")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_RECORD_TYPES = {
    "config": (lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
               "a mapping of parameter name -> choice"),
    "drop": (_number, "a number (points of accuracy drop)"),
    "descriptors": (lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and _number(x) for k, x in v.items()), "a mapping of name -> number"),
    "layer_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                    "a list of layer names"),
    "weight_params": (lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool)
        for k, x in v.items()), "a mapping of layer name -> integer"),
}


def _record(data: Any, where: str) -> TransferRecord:
    """One checked record (strict types; unknown keys are an error)."""
    if not isinstance(data, Mapping):
        raise TuneError(f"{where}: expected an object, got {type(data).__name__}")
    check_keys(data, _RECORD_TYPES, where)
    for key, (ok, what) in _RECORD_TYPES.items():
        required = key in ("config", "drop", "descriptors")
        if key not in data and not required:
            continue
        if not ok(data.get(key)):
            raise TuneError(f"{where}: {key!r} must be {what}, got {data.get(key)!r}")
    return TransferRecord.from_dict(data)
