"""A full disk in the middle of a write: for every writer (policy YAML/JSON, packed artifact,
ONNX, training checkpoint, run directory, report, latency table, transfer file, the tuner's
trials.csv), nothing is left that its loader accepts, and no temporary file stays behind.

Two ways to fill the disk: ``os.fsync`` / ``os.write`` monkeypatched to cut the file in half
and raise ``ENOSPC`` (always), and a real 1 MiB tmpfs filled to the brim (only as root where
``mount`` works, e.g. in CI). A third test reads the source: every file-writing call in
``src/bitsmith`` sits inside ``atomic_path`` (or writes to memory).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.atomic import DiskFullError, append_line
from bitsmith.config import ConfigError
from bitsmith.errors import EXIT_BAD_INPUT, InputError, exit_code_of
from bitsmith.export import ArtifactError, read_packed, save_packed
from bitsmith.export.latency import LatencyTable
from bitsmith.export.onnx_export import export_fp32_onnx
from bitsmith.policy import PolicyError
from bitsmith.report import write_report
from bitsmith.rundir import RunDirError, RunWriter, load_run
from bitsmith.training.checkpoint import load_checkpoint, save_checkpoint
from bitsmith.tune.errors import TuneError
from bitsmith.tune.outputs import write_trials
from bitsmith.tune.results import TrialRecord
from bitsmith.tune.samplers import TransferRecord
from bitsmith.tune.transfer import load_transfer, save_transfer

SRC = Path(__file__).resolve().parents[1] / "src" / "bitsmith"
W = QSpec("uniform_symmetric", 4, "channel")
A8 = QSpec("uniform_asymmetric", 8)


class Wide(nn.Module):
    """Big enough that each file spans many 4 KiB pages (the tmpfs test needs that)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 512)
        self.fc2 = nn.Linear(512, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _big_policy(layers: int = 400) -> Policy:
    return Policy.uniform([f"block{i}.conv" for i in range(layers)], W, A8)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]


def _quantized() -> nn.Module:
    model = Wide().eval()
    x = torch.randn(16, 64)
    return bitsmith.quantize(model, Policy.uniform(["fc1", "fc2"], W, A8), calibration=x)


def _run_dir(folder: Path) -> RunWriter:
    table = bitsmith.prepare(Wide().eval(), torch.randn(1, 64))[1]
    run = RunWriter(folder, model="Wide", dataset="random", producer="test")
    run.write_layers(table)
    run.set_fp32(accuracy=90.0)
    run.add_trial("W4A8", policy=Policy.uniform(table.names, W, A8), accuracy=88.0)
    run.choose("W4A8")
    return run


# Each writer: (write into folder, check folder afterwards). ``check`` must show that no
# half-written file is accepted: the loader refuses, or finds the previous complete file.
def _policy_yaml(d: Path) -> None:
    _big_policy().save(d / "p.yaml")


def _policy_json(d: Path) -> None:
    _big_policy().save(d / "p.json")


def _check_policy(d: Path) -> None:
    for name in ("p.yaml", "p.json"):
        if (d / name).exists():
            assert Policy.load(d / name) == _big_policy()
    for name in ("p.yaml", "p.json"):
        if not (d / name).exists():
            with pytest.raises(PolicyError):
                Policy.load(d / name)


def _packed(d: Path) -> None:
    save_packed(_quantized(), d / "m.safetensors")


def _check_packed(d: Path) -> None:
    if (d / "m.safetensors").exists():
        read_packed(d / "m.safetensors")
    else:
        with pytest.raises(ArtifactError):
            read_packed(d / "m.safetensors")


def _onnx(d: Path) -> None:
    export_fp32_onnx(Wide().eval(), d / "fp32.onnx", torch.randn(1, 64))


def _check_onnx(d: Path) -> None:
    import onnx

    if (d / "fp32.onnx").exists():
        onnx.checker.check_model(onnx.load(str(d / "fp32.onnx")))


def _checkpoint(d: Path) -> None:
    save_checkpoint({"w": torch.randn(256, 256)}, d / "last.pt")


def _check_checkpoint(d: Path) -> None:
    if (d / "last.pt").exists():
        assert load_checkpoint(d / "last.pt")["w"].shape == (256, 256)
    else:
        with pytest.raises(InputError, match="does not exist"):
            load_checkpoint(d / "last.pt")


def _run(d: Path) -> None:
    _run_dir(d / "run")


def _check_run(d: Path) -> None:
    try:
        data = load_run(d / "run")
    except RunDirError:
        return                                   # refused: nothing half-written accepted
    assert [t["name"] for t in data.trials] == ["W4A8"] and data.policy is not None


def _report(d: Path) -> None:
    write_report(d / "run")


def _check_report(d: Path) -> None:
    for name in ("report.html", "report.md", "report.json"):
        path = d / "run" / name
        if path.exists():
            text = path.read_text()
            assert text.rstrip().endswith(("</html>", "}", ")", "|")), name


def _latency(d: Path) -> None:
    entries = {f"layer{i}": {"fp32": 0.5, "w8a8": 0.25} for i in range(2000)}
    LatencyTable(entries, {"runtime": "test", "batch": 1, "unit": "ms"}).save(d / "lut.json")


def _check_latency(d: Path) -> None:
    if (d / "lut.json").exists():
        assert len(LatencyTable.load(d / "lut.json").layers) == 2000
    else:
        with pytest.raises(ConfigError):
            LatencyTable.load(d / "lut.json")


def _transfer(d: Path) -> None:
    records = [TransferRecord({f"w:l{j}": 4 for j in range(50)}, 0.5, {"layers": 50.0})
               for _ in range(100)]
    save_transfer(records, d / "transfer.json")


def _check_transfer(d: Path) -> None:
    if (d / "transfer.json").exists():
        assert len(load_transfer(d / "transfer.json")) == 100
    else:
        with pytest.raises(TuneError):
            load_transfer(d / "transfer.json")


def _trials_csv(d: Path) -> None:
    rows = [TrialRecord(i, "COMPLETE", {"w:a": 4, "w:b": 8}, {"accuracy": 90.0 - i},
                        [0.5], -1.0, 1.0) for i in range(2000)]
    write_trials(rows, d)


def _check_trials_csv(d: Path) -> None:
    if (d / "trials.csv").exists():
        with open(d / "trials.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 2000


WRITERS: dict[str, tuple[Callable[[Path], None], Callable[[Path], None]]] = {
    "latency_table": (_latency, _check_latency),
    "transfer": (_transfer, _check_transfer),
    "trials_csv": (_trials_csv, _check_trials_csv),
    "policy_yaml": (_policy_yaml, _check_policy),
    "policy_json": (_policy_json, _check_policy),
    "packed": (_packed, _check_packed),
    "onnx": (_onnx, _check_onnx),
    "checkpoint": (_checkpoint, _check_checkpoint),
    "run_dir": (_run, _check_run),
    "report": (_report, _check_report),
}


@contextlib.contextmanager
def _halfway_enospc(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``fsync`` of a temporary file cuts it in half and fails with ENOSPC (as a writer that
    ran out of space halfway); ``os.write`` to a ``.jsonl`` writes half, then fails."""
    real_fsync, real_write, hits = os.fsync, os.write, []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            name = os.readlink(f"/proc/self/fd/{fd}")
            if name.endswith(".tmp"):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                hits.append(name)
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    def write(fd: int, data: bytes) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") \
            else ""
        if name.endswith(".jsonl"):
            if name in hits:
                raise OSError(errno.ENOSPC, "No space left on device")
            hits.append(name)
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "write", write)
    yield hits
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "write", real_write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_enospc_halfway_leaves_nothing_accepted(tmp_path, monkeypatch, writer) -> None:
    write, check = WRITERS[writer]
    if writer == "report":
        _run(tmp_path)                          # the report needs a run directory first
    with _halfway_enospc(monkeypatch) as hits, pytest.raises(DiskFullError) as info:
        write(tmp_path)
    assert hits, "the writer never reached the disk through bitsmith.atomic"
    assert exit_code_of(info.value) == EXIT_BAD_INPUT and "no space left" in str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert _temporaries(tmp_path) == []
    check(tmp_path)
    write(tmp_path)                             # with space again, the same call succeeds
    check(tmp_path)


def test_a_torn_jsonl_append_is_cut_back(tmp_path, monkeypatch) -> None:
    path = tmp_path / "trials.jsonl"
    append_line(path, '{"name": "a"}')
    with _halfway_enospc(monkeypatch), pytest.raises(DiskFullError):
        append_line(path, '{"name": "b", "accuracy": 1.0}')
    assert path.read_text() == '{"name": "a"}\n'          # the half line was removed


def test_reader_skips_a_last_line_cut_by_a_power_loss(tmp_path) -> None:
    run = _run_dir(tmp_path / "run")
    with open(run.dir / "trials.jsonl", "a") as fh:
        fh.write('{"name": "half", "accur')              # no newline: never completed
    assert [t["name"] for t in load_run(run.dir).trials] == ["W4A8"]
    with open(run.dir / "trials.jsonl", "a") as fh:
        fh.write('\n{"name": "ok", "accuracy": 1.0, "size_bytes": 1}\n')
    with pytest.raises(RunDirError, match="line 2"):     # a torn line in the middle is not
        load_run(run.dir)


# ----------------------------------------------------------------- a real full disk
@pytest.fixture
def full_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """A 1 MiB tmpfs; ``fill(free)`` leaves ``free`` bytes and returns a folder in it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def fill(free: int) -> Path:
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        os.truncate(filler, max(filler.stat().st_size - free, 0))
        out = mount / "out"
        out.mkdir(exist_ok=True)
        return out

    try:
        yield fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_real_full_disk_leaves_nothing_accepted(tmp_path, full_disk, writer) -> None:
    write, check = WRITERS[writer]
    probe = tmp_path / "probe"
    probe.mkdir()
    if writer == "report":
        _run(probe)
    write(probe)                                          # how much the writer needs
    need = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    out = full_disk(need // 3)
    if writer == "report":
        import shutil

        shutil.copytree(probe / "run", out / "run", ignore=shutil.ignore_patterns("report*"))
    with pytest.raises(DiskFullError):
        write(out)
    assert _temporaries(out) == []
    check(out)


# ------------------------------------------------------------------ the source itself
WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save_file", "save", "export"}


def _writes_outside_atomic(path: Path) -> list[str]:
    """Calls that may write a file, outside any ``with atomic_path(...)`` block."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                isinstance(i.context_expr, ast.Call) and getattr(
                    i.context_expr.func, "id", getattr(i.context_expr.func, "attr", "")
                ) == "atomic_path" for i in node.items):
            guarded.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in guarded:
            continue
        func = node.func
        name = getattr(func, "attr", getattr(func, "id", ""))
        owner = getattr(getattr(func, "value", None), "id", "")
        mode = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
        risky = (name in ("write_text", "write_bytes")
                 or (name == "open" and any(m and m[0] in "wax" for m in mode if
                                            isinstance(m, str)))
                 or (name == "save" and owner in ("torch", "onnx", "np") and not any(
                     isinstance(a, ast.Name) and a.id == "buf" for a in node.args))
                 or (name == "save_file") or (name == "export" and owner == "onnx")
                 or (name == "savefig" and not any(
                     isinstance(a, ast.Name) and a.id == "buf" for a in node.args)))
        if risky:
            found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {name}")
    return found


def test_every_file_write_in_the_package_is_atomic() -> None:
    offenders = [hit for path in sorted(SRC.rglob("*.py")) if path.name != "atomic.py"
                 for hit in _writes_outside_atomic(path)]
    assert offenders == [], "write through bitsmith.atomic instead:\n" + "\n".join(offenders)
