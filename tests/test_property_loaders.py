"""Property-based tests (hypothesis): arbitrary bytes and arbitrary structures given to the
Policy, config, search-space, transfer and run-directory loaders and to the artifact reader
raise only the documented bad-input error of each (or load), never anything else.

Bounded: a few dozen examples each and a per-example deadline, so the suite stays quick.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.cli_config import check_cli_config
from bitsmith.config import ConfigError, read_structured_file
from bitsmith.export import ArtifactError, load_packed, read_packed, save_packed
from bitsmith.export.metadata import digest
from bitsmith.policy import PolicyError
from bitsmith.rundir import RunDirError, RunWriter, load_run
from bitsmith.tune.errors import TuneError
from bitsmith.tune.space import TuneSpace
from bitsmith.tune.transfer import load_transfer

FAST = settings(max_examples=40, deadline=timedelta(seconds=2), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
W = QSpec("uniform_symmetric", 4, "channel")
A8 = QSpec("uniform_asymmetric", 8)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
structures = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
QSPEC_KEYS = ["scheme", "bits", "granularity", "observer", "percentile", "pow2_scale",
              "reduced_range", "learnable", "bitz"]
qspecs = st.dictionaries(st.sampled_from(QSPEC_KEYS), st.one_of(
    scalars, st.sampled_from(["uniform_symmetric", "binary", "channel", "tensor", "mse"]),
    st.integers(0, 17)), max_size=6)
layer_specs = st.one_of(st.none(), structures, st.fixed_dictionaries(
    {}, optional={"weight": st.one_of(st.none(), qspecs), "act": st.one_of(st.none(), qspecs),
                  "sparsity": scalars}))
policies = st.fixed_dictionaries({"layers": st.dictionaries(st.text(max_size=8), layer_specs,
                                                            max_size=3)},
                                 optional={"format": st.sampled_from(
                                     ["bitsmith.policy/1", "bitsmith.policy/2", "x", 3]),
                                     "layer_count": scalars, "checksum": scalars})


def _dump(data: Any) -> str:
    return json.dumps(data, allow_nan=True)


# ------------------------------------------------------------------------ policies
@FAST
@given(st.binary(max_size=300))
def test_policy_load_of_any_bytes(tmp_path: Path, raw: bytes) -> None:
    for name in ("p.yaml", "p.json"):
        path = tmp_path / name
        path.write_bytes(raw)
        try:
            Policy.load(path)
        except PolicyError:
            pass


@FAST
@given(st.one_of(structures, policies))
def test_policy_from_any_structure(data: Any) -> None:
    try:
        policy = Policy.from_dict(data)
    except PolicyError:
        return
    assert Policy.from_yaml(policy.to_yaml()) == policy        # what loads, round-trips


@FAST
@given(policies)
def test_policy_yaml_text_of_any_policy_shape(data: Any) -> None:
    try:
        Policy.from_yaml(_dump(data))
    except PolicyError:
        pass


# -------------------------------------------------------------- config-like files
@FAST
@given(st.binary(max_size=300))
def test_read_structured_file_of_any_bytes(tmp_path: Path, raw: bytes) -> None:
    for name in ("c.yaml", "c.json"):
        (tmp_path / name).write_bytes(raw)
        try:
            read_structured_file(tmp_path / name)
        except ConfigError:
            pass


def _group() -> tuple[Any, Any]:
    from bitsmith.cli import app

    group = typer.main.get_command(app)
    return group, group.make_context("bitsmith", ["schemes"], resilient_parsing=True)


CLI = _group()
commands = st.sampled_from(["demo", "tune", "export", "report", "nope"])
options = st.sampled_from(["epochs", "seed", "out", "no_prune", "n_trials", "tolerance",
                           "transfer", "bogus"])


@FAST
@given(st.one_of(structures, st.dictionaries(commands, st.dictionaries(options, structures,
                                                                        max_size=3),
                                             max_size=3)))
def test_cli_config_of_any_structure(data: Any) -> None:
    group, ctx = CLI
    try:
        check_cli_config(data, group, ctx, "cfg")
    except ConfigError:
        pass


space_keys = st.sampled_from(["preset", "scheme", "act_clip", "weight_clip", "granularity",
                              "calib_size", "float_layers", "weight_bits", "act_bits",
                              "bias_correction", "reduced_range", "per_layer_weight_bits",
                              "per_layer_act_bits", "percentile", "extra", "schema"])


@FAST
@given(st.one_of(structures, st.dictionaries(space_keys, structures, max_size=5)))
def test_search_space_of_any_structure(data: Any) -> None:
    try:
        TuneSpace.from_dict(data)
    except TuneError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_search_space_file_of_any_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "s.yaml").write_bytes(raw)
    try:
        TuneSpace.load(tmp_path / "s.yaml")
    except TuneError:
        pass


record_keys = st.sampled_from(["config", "drop", "descriptors", "layer_names",
                               "weight_params", "extra"])


@FAST
@given(st.one_of(
    st.binary(max_size=200).map(lambda b: b),
    st.one_of(structures, st.fixed_dictionaries(
        {"format": st.just("bitsmith.tune.transfer/1"),
         "records": st.lists(st.dictionaries(record_keys, structures, max_size=5),
                             max_size=3)})).map(lambda d: _dump(d).encode())))
def test_transfer_file_of_anything(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "t.json").write_bytes(raw)
    try:
        load_transfer(tmp_path / "t.json")
    except TuneError:
        pass


# ------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    from conftest import TinyNet, randomize_bn

    folder = tmp_path_factory.mktemp("run") / "run"
    table = bitsmith.prepare(randomize_bn(TinyNet()), torch.randn(1, 3, 16, 16))[1]
    run = RunWriter(folder, model="Tiny", dataset="random")
    run.write_layers(table)
    run.set_fp32(accuracy=90.0)
    run.add_trial("W4A8", policy=Policy.uniform(table.names, W, A8), accuracy=88.0)
    run.log_search(0, "x", best_accuracy=88.0)
    run.write_export([{"name": "onnx", "size_bytes": 10}])
    run.choose("W4A8")
    return folder


RUN_FILES = ["run.json", "layers.json", "trials.jsonl", "policy.yaml", "search.jsonl",
             "export.json", "masks.json", "search_layers.json", "sensitivity.json"]


@pytest.mark.parametrize("name", RUN_FILES)
@settings(FAST, max_examples=20)
@given(st.one_of(st.binary(max_size=200), structures.map(lambda d: _dump(d).encode())))
def test_run_directory_with_any_file_replaced(tmp_path: Path, good_run: Path, name: str,
                                              raw: bytes) -> None:
    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(good_run, run)
    (run / name).write_bytes(raw)
    try:
        load_run(run)
    except RunDirError:
        pass


trial_keys = st.sampled_from(["name", "accuracy", "size_bytes", "bitops", "avg_weight_bits",
                              "compression", "step", "source", "policy_file", "other"])


@FAST
@given(st.lists(st.dictionaries(trial_keys, structures, max_size=6), min_size=1, max_size=3))
def test_run_directory_with_any_trials(tmp_path: Path, good_run: Path, trials: list) -> None:
    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(good_run, run)
    (run / "trials.jsonl").write_text("".join(_dump(t) + "\n" for t in trials))
    try:
        load_run(run)
    except RunDirError:
        pass


# ------------------------------------------------------------------ packed artifacts
@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    from conftest import TinyNet, randomize_bn

    path = tmp_path_factory.mktemp("packed") / "m.safetensors"
    model = randomize_bn(TinyNet())
    q = bitsmith.quantize(model, Policy.uniform(["conv1", "dw", "pw", "fc"], W, A8),
                          calibration=torch.randn(8, 3, 16, 16))
    save_packed(q, path)
    return path


@FAST
@given(st.binary(max_size=400))
def test_artifact_reader_of_any_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "a.safetensors").write_bytes(raw)
    with pytest.raises(ArtifactError):
        read_packed(tmp_path / "a.safetensors")


@FAST
@given(st.data())
def test_artifact_reader_of_damaged_artifacts(tmp_path: Path, packed: Path, data) -> None:
    raw = bytearray(packed.read_bytes())
    cut = data.draw(st.integers(0, len(raw) - 1))
    flips = data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=3))
    for i in flips:
        raw[i] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        raw = raw[:cut]
    (tmp_path / "d.safetensors").write_bytes(bytes(raw))
    try:
        read_packed(tmp_path / "d.safetensors")
    except ArtifactError:
        pass


meta_keys = st.sampled_from(["format", "versions", "model", "conversion", "policy", "sparse",
                             "state", "inputs", "layer_table", "extra"])


@FAST
@given(st.dictionaries(meta_keys, structures, max_size=8))
def test_artifact_loader_of_any_metadata_with_a_valid_checksum(tmp_path: Path, packed: Path,
                                                               meta: dict) -> None:
    """A file whose checksum was recomputed over arbitrary metadata (what anyone can do)."""
    from conftest import TinyNet

    with safe_open(str(packed), framework="np") as f:
        good = json.loads(f.metadata()["bitsmith"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta_json = json.dumps({**good, **meta, "format": good["format"]}, allow_nan=True)
    save_file(tensors, str(tmp_path / "m.safetensors"),
              metadata={"bitsmith": meta_json, "sha256": digest(tensors, meta_json)})
    try:
        load_packed(tmp_path / "m.safetensors", TinyNet())
    except ArtifactError:
        pass
