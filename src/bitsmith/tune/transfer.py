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
from bitsmith.tune.errors import TuneError
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
        TuneError: the file is missing or has neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"transfer file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TuneError(f"transfer file {path} is not valid JSON: {err}") from None
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        return [TransferRecord.from_dict(r) for r in data.get("records", [])]
    if isinstance(data, Mapping) and "rows" in data and "descriptors" in data:
        return [TransferRecord(r["config"], float(r["drop"]), data["descriptors"],
                               data.get("layer_names", ()), data.get("weight_params", {}))
                for r in data["rows"]]
    raise TuneError(f"{path} is neither a bitsmith transfer file ({FORMAT}) nor a tune table")
