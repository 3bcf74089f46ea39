"""Packed-artifact authenticity: the checksum detects damage, the HMAC-SHA256 signature
detects tampering (a re-signed or re-checksummed edit is refused with the key)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet, random_tensors_file
from safetensors import safe_open
from safetensors.numpy import save_file
from test_export_cli import _app
from typer.testing import CliRunner

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import ArtifactError, load_packed, read_packed, save_packed
from bitsmith.export.cli import EXIT_BAD_INPUT
from bitsmith.export.metadata import digest, signature

KEY = b"0123456789abcdef-secret"
A8 = QSpec("uniform_asymmetric", 8)


@pytest.fixture
def artifact(tmp_path, tiny_net, images) -> Path:
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"], QSpec("uniform_symmetric", 4, "channel"),
                            A8)
    q = bitsmith.quantize(tiny_net, policy, calibration=images)
    path = tmp_path / "m.safetensors"
    save_packed(q, path, key=KEY)
    return path


def _tamper(path: Path, out: Path, key: bytes | None = None, keep_signature: bool = False
            ) -> None:
    """Flip one payload byte, recompute the SHA-256 (what anyone can do), and re-sign with
    ``key`` (an attacker's key) or keep / drop the old signature."""
    with safe_open(str(path), framework="np") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k).copy() for k in f.keys()}
    name = sorted(tensors)[0]
    flat = tensors[name].reshape(-1).view(np.uint8)
    flat[0] ^= 0xFF
    header["sha256"] = digest(tensors, header["bitsmith"])
    if key is not None:
        header["hmac_sha256"] = signature(tensors, header["bitsmith"], key)
    elif not keep_signature:
        header.pop("hmac_sha256", None)
    save_file(tensors, str(out), metadata=header)


def test_signed_artifact_loads_with_its_key(artifact) -> None:
    model = load_packed(artifact, TinyNet(), key=KEY)
    again = bitsmith.load(str(artifact), TinyNet(), key=KEY.decode())   # str keys are UTF-8
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    load_packed(artifact, TinyNet())            # without a key: checksum only, still loads


@pytest.mark.parametrize("how", ["resigned", "checksum_only", "stale_signature"])
def test_tampered_artifact_is_refused_with_the_key(artifact, tmp_path, how) -> None:
    bad = tmp_path / f"{how}.safetensors"
    _tamper(artifact, bad, key=b"attacker" if how == "resigned" else None,
            keep_signature=how == "stale_signature")
    expected = "not signed" if how == "checksum_only" else "signature mismatch"
    with pytest.raises(ArtifactError, match=expected):
        load_packed(bad, TinyNet(), key=KEY)
    # the limitation the docs state: without a key, a re-checksummed edit loads silently
    load_packed(bad, TinyNet())


def test_wrong_key_and_empty_key_are_refused(artifact) -> None:
    with pytest.raises(ArtifactError, match="signature mismatch"):
        read_packed(artifact, key=b"another key")
    with pytest.raises(ArtifactError, match="empty"):
        read_packed(artifact, key=b"")


def test_damage_is_still_caught_by_the_checksum(artifact, tmp_path) -> None:
    data = bytearray(artifact.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    data[8 + header_len + 3] ^= 0x01             # one payload bit, checksum not updated
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(bytes(data))
    for key in (None, KEY):
        with pytest.raises(ArtifactError, match="checksum mismatch"):
            read_packed(bad, key=key)


def test_cli_signs_with_key_file_and_verify_refuses_a_tampered_copy(tmp_path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_bytes(KEY)
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(_app(), [
        "export", "--model", "small_cnn", "--data", random_tensors_file(tmp_path),
        "--calibration-size", "32", "--out", str(out), "--batch", "1", "--runs", "3",
        "--runs-large", "3", "--key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    packed = out / "model.safetensors"
    header = json.loads(packed.read_bytes()[8:8 + struct.unpack("<Q", packed.read_bytes()[:8])[0]])
    assert "hmac_sha256" in header["__metadata__"]
    ok = runner.invoke(_app(), ["verify", str(packed), "--key-file", str(key_file)])
    assert ok.exit_code == 0 and "signature verified" in " ".join(ok.output.split())
    bad = tmp_path / "tampered.safetensors"
    _tamper(packed, bad, key=b"attacker")
    refused = runner.invoke(_app(), ["verify", str(bad), "--key-file", str(key_file)])
    assert refused.exit_code == EXIT_BAD_INPUT
    assert "signature mismatch" in " ".join(refused.output.split())
    unsigned = runner.invoke(_app(), ["verify", str(bad)])
    assert unsigned.exit_code == 0 and "tampering is not detected" in " ".join(
        unsigned.output.split())
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    assert runner.invoke(_app(), ["verify", str(packed), "--key-file", str(empty)]
                         ).exit_code == EXIT_BAD_INPUT
