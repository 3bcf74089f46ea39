"""Policy files: format 2 detects truncation even when the YAML still parses; format 1 still
loads; strict types (quoted booleans and numbers are errors)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from bitsmith.policy import FORMAT, LayerSpec, Policy, PolicyError, QSpec

NAMES = [f"layer{i}.conv" for i in range(20)]


def _policy() -> Policy:
    return Policy.uniform(NAMES, QSpec("uniform_symmetric", 4, "channel", percentile=99.9),
                          QSpec("uniform_asymmetric", 8)).with_layers(
        {"layer3.conv": LayerSpec(sparsity=0.25)})


def test_format_2_header_and_round_trip(tmp_path: Path) -> None:
    policy = _policy()
    data = policy.to_dict()
    assert list(data)[:3] == ["format", "layer_count", "checksum"] and data["format"] == FORMAT
    assert data["layer_count"] == 20 and data["checksum"].startswith("sha256:")
    for name in ("p.yaml", "p.json"):
        assert Policy.load(policy.save(tmp_path / name)) == policy


def test_truncation_that_still_parses_is_refused(tmp_path: Path) -> None:
    path = _policy().save(tmp_path / "p.yaml")
    text = path.read_text()
    cut_at_layer = text[: text.index("  layer10.conv:")]          # 10 whole layers remain
    cut_in_layer = text[: text.index("    act:", text.index("  layer19.conv:"))]
    for cut, why in ((cut_at_layer, "header says 20"), (cut_in_layer, "checksum")):
        assert isinstance(yaml.safe_load(cut)["layers"], dict)     # the YAML still parses
        path.write_text(cut)
        with pytest.raises(PolicyError, match=why):
            Policy.load(path)


def test_format_1_and_format_less_files_still_load(tmp_path: Path) -> None:
    layers = _policy().to_dict()["layers"]
    for header in ({"format": "bitsmith.policy/1"}, {}):
        path = tmp_path / "old.yaml"
        path.write_text(yaml.safe_dump({**header, "layers": layers}, sort_keys=False))
        assert Policy.load(path) == _policy()


def test_hand_edit_needs_the_checksum_line_removed(tmp_path: Path) -> None:
    path = _policy().save(tmp_path / "p.yaml")
    edited = path.read_text().replace("bits: 4", "bits: 5", 1)
    path.write_text(edited)
    with pytest.raises(PolicyError, match="delete the 'checksum' line"):
        Policy.load(path)
    path.write_text("\n".join(line for line in edited.splitlines()
                              if not line.startswith("checksum:")))
    assert Policy.load(path)["layer0.conv"].weight.bits == 5


def test_unsupported_format_and_missing_layer_count(tmp_path: Path) -> None:
    data = _policy().to_dict()
    with pytest.raises(PolicyError, match="unsupported format"):
        Policy.from_dict({**data, "format": "bitsmith.policy/9"})
    with pytest.raises(PolicyError, match="layer_count"):
        Policy.from_dict({k: v for k, v in data.items() if k != "layer_count"})
    with pytest.raises(PolicyError, match="did you mean 'layers'"):
        Policy.from_dict({**data, "layerz": {}})


def test_fingerprint_is_unchanged_by_the_new_format() -> None:
    policy = _policy()
    layers = {n: s.to_dict() for n, s in policy.items()}
    old = json.dumps({"format": "bitsmith.policy/1", "layers": layers}, sort_keys=True,
                     separators=(",", ":"))
    assert policy.fingerprint() == hashlib.sha256(old.encode()).hexdigest()


@pytest.mark.parametrize("field, value, message", [
    ("pow2_scale", "no", "pow2_scale must be true or false"),
    ("pow2_scale", "false", "pow2_scale must be true or false"),
    ("learnable", "no", "learnable must be true or false"),
    ("reduced_range", 1, "reduced_range must be true or false"),
    ("percentile", "99.9", "percentile must be a number"),
    ("percentile", [1], "percentile must be a number"),
    ("percentile", True, "percentile must be a number"),
    ("bits", "4", "bits must be an integer"),
    ("observer", ["mse"], "observer"),
    ("bitz", 4, "did you mean 'bits'"),
])
def test_quoted_booleans_and_numbers_are_refused(field: str, value: object, message: str
                                                 ) -> None:
    weight = {"scheme": "uniform_symmetric", "bits": 4, field: value}
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict({"layers": {"conv": {"weight": weight}}})


@pytest.mark.parametrize("value", ["0.5", [0.5], True, float("nan"), 1.0])
def test_sparsity_must_be_a_number_in_range(value: object) -> None:
    with pytest.raises(PolicyError, match="sparsity"):
        Policy.from_dict({"layers": {"conv": {"sparsity": value}}})
