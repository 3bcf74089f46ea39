"""Every class of bad input ends the ``bitsmith`` command with exit code 2 and one line on
stderr that names the input and the fix: never a traceback (issue 17's list, one test per
class; the top-level error boundary is ``bitsmith.cli``'s)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest
import torch
from conftest import random_tensors_file

import bitsmith
from bitsmith.cli import main
from bitsmith.errors import EXIT_BAD_INPUT, exit_code_of
from bitsmith.models import cifar_resnet
from bitsmith.policy import Policy, QSpec
from bitsmith.quantize import CalibrationError
from bitsmith.rundir import RunWriter

GARBAGE = bytes(range(256)) * 4 + b"\x00\xff\xfe"
EXPORT = ["export", "--model", "small_cnn", "--calibration-size", "8", "--runs", "3",
          "--runs-large", "3"]


@pytest.fixture(autouse=True)
def _export_data(tmp_path):
    """``EXPORT`` + ``--data`` of random 1x8x8 inputs in ``tmp_path``."""
    EXPORT[3:3] = ["--data", random_tensors_file(tmp_path, size=8)]
    yield
    del EXPORT[3:5]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, *expected: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, text
    assert "Traceback" not in text
    assert len(lines) == 1 and not captured.out.strip(), text    # one line, on stderr
    for word in expected:
        assert word in lines[0], lines[0]
    return lines[0]


def _policy_file(tmp_path: Path, field: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("format: bitsmith.policy/1\nlayers:\n  conv1:\n    weight: {scheme: "
                    f"uniform_symmetric, bits: 8}}\n    {field}\n")
    return path


# ------------------------------------------------------------------------ policies
@pytest.mark.parametrize("value", ["'0.5'", "[0.5]"])
def test_string_or_list_sparsity(tmp_path, capsys, value) -> None:
    bad = _policy_file(tmp_path, f"sparsity: {value}")
    _one_line_exit_2([*EXPORT, "--policy", str(bad), "--out", str(tmp_path / "o")], capsys,
                     str(bad), "sparsity", "number")


@pytest.mark.parametrize("value", ["'99.9'", "[1]"])
def test_string_or_list_percentile(tmp_path, capsys, value) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("layers:\n  conv1:\n    weight: {scheme: uniform_symmetric, bits: 8, "
                    f"observer: percentile, percentile: {value}}}\n")
    _one_line_exit_2([*EXPORT, "--policy", str(path), "--out", str(tmp_path / "o")], capsys,
                     "percentile", "number")


@pytest.mark.parametrize("field", ["pow2_scale", "learnable"])
def test_quoted_boolean_in_a_policy(tmp_path, capsys, field) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("layers:\n  conv1:\n    weight: {scheme: uniform_symmetric, bits: 8, "
                    f"{field}: 'no'}}\n")
    _one_line_exit_2([*EXPORT, "--policy", str(path), "--out", str(tmp_path / "o")], capsys,
                     field, "true or false")


def test_binary_garbage_policy(tmp_path, capsys) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_bytes(GARBAGE)
    _one_line_exit_2([*EXPORT, "--policy", str(bad), "--out", str(tmp_path / "o")], capsys,
                     str(bad), "binary")


def test_truncated_policy(tmp_path, capsys) -> None:
    path = tmp_path / "policy.yaml"
    Policy.uniform([f"l{i}" for i in range(20)], QSpec(), QSpec("uniform_asymmetric")
                   ).save(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    _one_line_exit_2([*EXPORT, "--policy", str(path), "--out", str(tmp_path / "o")], capsys,
                     "truncated")


# ---------------------------------------------------------------- config-like files
def test_binary_garbage_config(tmp_path, capsys) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_bytes(GARBAGE)
    _one_line_exit_2(["--config", str(bad), "schemes"], capsys, str(bad), "binary")


def test_unknown_key_in_config(tmp_path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("demo:\n  epoch: 3\n")
    _one_line_exit_2(["--config", str(cfg), "demo"], capsys, "'epoch'", "did you mean 'epochs'")


def test_quoted_boolean_in_config(tmp_path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tune:\n  prune: 'no'\n")
    _one_line_exit_2(["--config", str(cfg), "tune"], capsys, "prune", "true or false")


def test_binary_garbage_space(tmp_path, capsys) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_bytes(GARBAGE)
    _one_line_exit_2(["tune", "--space", str(bad), "--out", str(tmp_path / "o")], capsys,
                     str(bad), "binary")


def test_unknown_key_in_space(tmp_path, capsys) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("preset: mixed\nweight_bit: [2, 4]\n")
    _one_line_exit_2(["tune", "--space", str(space), "--out", str(tmp_path / "o")], capsys,
                     "'weight_bit'", "did you mean 'weight_bits'")


def test_binary_garbage_transfer(tmp_path, capsys) -> None:
    bad = tmp_path / "transfer.json"
    bad.write_bytes(GARBAGE)
    _one_line_exit_2(["tune", "--transfer", str(bad), "--out", str(tmp_path / "o")], capsys,
                     str(bad), "binary")


# --------------------------------------------------------------------- checkpoints
@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data folder whose ResNet-20 checkpoint a test replaces."""
    folder = tmp_path / "data" / "models" / "akamaster_resnet_cifar10"
    folder.mkdir(parents=True)
    monkeypatch.setenv("BITSMITH_DATA", str(tmp_path / "data"))
    return folder


def _named(folder: Path, payload: bytes) -> Path:
    """``resnet20-<sha256 prefix>.th`` with the true prefix of ``payload``."""
    path = folder / f"resnet20-{hashlib.sha256(payload).hexdigest()[:8]}.th"
    path.write_bytes(payload)
    return path


def _state_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": cifar_resnet(20).state_dict()}, buf)
    return buf.getvalue()


PRETRAINED = ["export", "--model", "resnet20"]  # the shipped weights, read first


def test_truncated_checkpoint(tmp_path, capsys, data_dir) -> None:
    _named(data_dir, _state_bytes()[:5000])
    _one_line_exit_2([*PRETRAINED, "--out", str(tmp_path / "o")], capsys, "resnet20-",
                     "truncated")


def test_wrong_hash_checkpoint(tmp_path, capsys, data_dir) -> None:
    payload = _state_bytes()
    (data_dir / "resnet20-00000000.th").write_bytes(payload)
    _one_line_exit_2([*PRETRAINED, "--out", str(tmp_path / "o")], capsys, "SHA-256",
                     "corrupt", "copy it again")


class _Payload:
    def __reduce__(self):                       # would run code if it were unpickled
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_checkpoint(tmp_path, capsys, data_dir) -> None:
    buf = io.BytesIO()
    torch.save({"state_dict": _Payload()}, buf)
    _named(data_dir, buf.getvalue())
    _one_line_exit_2([*PRETRAINED, "--out", str(tmp_path / "o")], capsys,
                     "weights_only=True", "refuses to run")


# ---------------------------------------------------------------- data, run dirs, disk
def test_empty_calibration_tensor(tiny_net) -> None:
    """No command takes a raw calibration tensor yet: the API raises the bad-input error the
    CLI maps to exit 2, with one line (was a ZeroDivisionError)."""
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"], QSpec(), QSpec("uniform_asymmetric"))
    for call in (lambda: bitsmith.quantize(tiny_net, policy, calibration=torch.empty(0, 3, 8, 8)),
                 lambda: bitsmith.collect_stats(tiny_net, torch.empty(0, 3, 8, 8))):
        with pytest.raises(CalibrationError) as info:
            call()
        assert exit_code_of(info.value) == EXIT_BAD_INPUT
        assert "empty" in str(info.value) and "\n" not in str(info.value)


def _run(tmp_path: Path, tiny_net, images) -> Path:
    table = bitsmith.prepare(tiny_net, images[:1])[1]
    run = RunWriter(tmp_path / "run", model="Tiny", dataset="random")
    run.write_layers(table)
    run.add_trial("W8A8", policy=Policy.uniform(table.names, QSpec(),
                                                QSpec("uniform_asymmetric")), accuracy=80.0)
    run.choose("W8A8")
    return run.dir


@pytest.mark.parametrize("line, field", [
    ('{"name": 7, "accuracy": 1.0, "size_bytes": 10}', "'name'"),
    ('{"name": "x", "accuracy": "high", "size_bytes": 10}', "'accuracy'"),
])
def test_bad_trial_in_run_directory(tmp_path, capsys, tiny_net, images, line, field) -> None:
    run = _run(tmp_path, tiny_net, images)
    with open(run / "trials.jsonl", "a") as fh:
        fh.write(line + "\n")
    _one_line_exit_2(["report", str(run)], capsys, "trials.jsonl", field)


def test_binary_garbage_run_json(tmp_path, capsys, tiny_net, images) -> None:
    run = _run(tmp_path, tiny_net, images)
    (run / "run.json").write_bytes(GARBAGE)
    _one_line_exit_2(["report", str(run)], capsys, "run.json", "binary")


def test_disk_full(tmp_path, capsys, monkeypatch, tiny_net, images) -> None:
    run = _run(tmp_path, tiny_net, images)
    real = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    _one_line_exit_2(["report", str(run)], capsys, "no space left", str(run))


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path, capsys) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_bytes(GARBAGE)
    assert main(["--debug", "--config", str(bad), "schemes"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
