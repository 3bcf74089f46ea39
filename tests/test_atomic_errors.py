"""The shared error family and atomic writes: exit codes, and no partial file on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bitsmith import atomic
from bitsmith.errors import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_INFEASIBLE,
    BitsmithError,
    InfeasibleError,
    InputError,
    exit_code_of,
)


def test_exit_codes_of_the_family() -> None:
    from bitsmith.compress.bits import infeasible_size
    from bitsmith.cost.budget import InfeasibleBudgetError
    from bitsmith.policy import PolicyError
    from bitsmith.tune.errors import TuneError

    assert exit_code_of(PolicyError("x")) == EXIT_BAD_INPUT
    assert exit_code_of(TuneError("x")) == EXIT_BAD_INPUT
    assert exit_code_of(InfeasibleBudgetError("size_bytes", 1, 2)) == EXIT_INFEASIBLE
    assert exit_code_of(infeasible_size(1, 2)) == EXIT_INFEASIBLE
    assert exit_code_of(RuntimeError("x")) == EXIT_ERROR
    assert exit_code_of(BitsmithError("x")) == EXIT_ERROR
    assert isinstance(PolicyError("x"), ValueError)  # historical base kept
    assert issubclass(InputError, BitsmithError) and issubclass(InfeasibleError, BitsmithError)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic.atomic_write_text(target, "old")
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    class FullDisk:
        """A file object whose write fails halfway, as on ENOSPC."""

        def __init__(self, fh) -> None:
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            self.fh.flush()

    real_open = open
    monkeypatch.setattr(atomic, "open", lambda p, mode="r": FullDisk(real_open(p, mode)),
                        raising=False)
    with pytest.raises(OSError):
        atomic.atomic_write_bytes(target, b"x" * 1000)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_path_removes_temporary_on_error(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    with pytest.raises(ValueError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("exporter failed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
