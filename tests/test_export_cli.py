"""``bitsmith export`` / ``bitsmith bench`` through ``register(app)``: outputs and exit codes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import typer
from conftest import random_tensors_file
from typer.testing import CliRunner

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import load_packed
from bitsmith.export.cli import EXIT_BAD_INPUT

runner = CliRunner()


def _text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _app() -> typer.Typer:
    from bitsmith.cli import app

    return app


def test_export_then_bench(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(_app(), [
        "export", "--model", "small_cnn", "--data", random_tensors_file(tmp_path),
        "--calibration-size", "64", "--out", str(out), "--batch", "1", "--batch", "4",
        "--runs", "5", "--runs-large", "3"])
    assert result.exit_code == 0, result.output
    for name in ("fp32.onnx", "quantized.onnx", "model.safetensors", "summary.json",
                 "summary.md"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["latency"]) == {"1", "4"}
    assert summary["sizes"]["packed_tensors"] == summary["sizes"]["cost_model_prediction"]
    assert summary["agreement"]["count"] == 128  # the test part of the 0.2/0.4/0.4 split
    runtime = summary["runtime_agreement"]  # vs the simulation of this very export
    assert runtime["count"] == 128 and runtime["int32_bias_layers"] > 0
    assert runtime["mean_abs_error"] <= summary["agreement"]["mean_abs_error"]
    itself = summary["runtime_reproducibility"]  # optimised vs unoptimised ONNX Runtime
    assert itself["count"] == 128 and itself["max_abs_error"] < 1e-3
    markdown = (out / "summary.md").read_text()
    assert "simulation of this export" in markdown and "graph optimisations off" in markdown
    assert "speedup" in _text(result) or "Export summary" in _text(result)
    report = tmp_path / "bench.json"
    result = runner.invoke(_app(), ["bench", str(out / "fp32.onnx"), str(out / "quantized.onnx"),
                                    "--batch", "2", "--runs", "3", "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert len(data["results"]["2"]) == 2 and data["threads"] == 2
    assert all(r["median_ms"] > 0 for r in data["results"]["2"])


def test_bad_input_exit_code_2(tmp_path):
    app = _app()
    data = random_tensors_file(tmp_path)
    result = runner.invoke(app, ["export", "--model", "no_such_model", "--data", data])
    assert result.exit_code == EXIT_BAD_INPUT and "unknown model" in _text(result)
    result = runner.invoke(app, ["export", "--model", "small_cnn", "--data", data,
                                 "--policy", str(tmp_path / "missing.yaml")])
    assert result.exit_code == EXIT_BAD_INPUT and "neither a preset" in _text(result)
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("format: bitsmith.policy/1\nlayers:\n  conv1:\n    weight:\n"
                          "      scheme: uniform_symmetric\n      bits: 8\n    act:\n"
                          "      scheme: binary\n      bits: 1\n")
    result = runner.invoke(app, ["export", "--model", "small_cnn", "--data", data,
                                 "--policy", str(bad_policy)])
    assert result.exit_code == EXIT_BAD_INPUT and "not an integer grid" in _text(result)
    result = runner.invoke(app, ["bench", str(tmp_path / "none.onnx")])
    assert result.exit_code == EXIT_BAD_INPUT and "does not exist" in _text(result)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    result = runner.invoke(app, ["bench", str(junk)])
    assert result.exit_code == EXIT_BAD_INPUT and "not a readable ONNX model" in _text(result)


def test_export_of_a_learned_rounding_policy(tmp_path):
    """A policy with ``rounding: adaround`` exports: the command once passed only
    calibration statistics to ``quantize``, which learned rounding cannot learn from."""
    import torch

    import bitsmith
    from bitsmith import Policy, QSpec
    from bitsmith.models import build_model
    from bitsmith.policy import Rounding

    _, table, _ = bitsmith.prepare(build_model("small_cnn"), torch.zeros(1, 1, 16, 16))
    policy = Policy.uniform(table.names, QSpec("uniform_symmetric", 4, "channel"),
                            QSpec("uniform_asymmetric", 8)).with_options(
        rounding=Rounding("adaround", iterations=2, batch_size=8))
    policy.save(tmp_path / "ada.yaml")
    out = tmp_path / "run"
    result = runner.invoke(_app(), [
        "export", "--model", "small_cnn", "--data", random_tensors_file(tmp_path),
        "--calibration-size", "16", "--policy", str(tmp_path / "ada.yaml"), "--out", str(out),
        "--batch", "1", "--runs", "3", "--runs-large", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_fingerprint"] == policy.fingerprint()


def test_a_policy_with_calib_size_rebuilds_the_model_it_came_from(tmp_path):
    """A tuned policy's ``calib_size`` counts the first inputs of the whole calibration split,
    as the tuner read them: ``export --policy`` rebuilds exactly that model (it failed when
    the split held more inputs than calib_size, and cut larger splits to a subset of 512)."""
    from bitsmith.inputs import load_workload

    data = random_tensors_file(tmp_path, n=3000)  # the split rule: 600 calibration inputs
    work = load_workload("small_cnn", data)
    _, table, _ = bitsmith.prepare(work.model, next(iter(work.calibration))[0][:1])
    policy = Policy.uniform(table.names, QSpec("uniform_symmetric", 8, "channel"),
                            QSpec("uniform_asymmetric", 8), calib_size=120)
    policy.save(tmp_path / "tuned.yaml")
    torch.save(work.model.state_dict(), tmp_path / "net.pt")  # small_cnn is built at random
    expected = bitsmith.quantize(work.model, policy, calibration=work.calibration)
    out = tmp_path / "run"
    args = ["export", "--model", "small_cnn", "--checkpoint", str(tmp_path / "net.pt"),
            "--data", data, "--policy", str(tmp_path / "tuned.yaml"), "--out", str(out),
            "--batch", "1", "--runs", "3"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    x = next(iter(work.test))[0]
    with torch.no_grad():
        assert torch.equal(load_packed(out / "model.safetensors")(x), expected(x))
    result = runner.invoke(_app(), [*args, "--calibration-size", "50"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "first 120 calibration inputs (calib_size" in _text(result)


def _trained_run(tmp_path, kind: str):
    """A small_cnn checkpoint, data, and a run directory as ``bitsmith search`` (``kind``
    "search") or ``bitsmith compress`` ("compress") leaves it: the policy and a quantized
    model whose weights training moved away from the checkpoint's."""
    from bitsmith.inputs import load_workload
    from bitsmith.trained import save_result

    data = random_tensors_file(tmp_path)
    work = load_workload("small_cnn", data)
    torch.save(work.model.state_dict(), tmp_path / "net.pt")
    _, table, _ = bitsmith.prepare(work.model, next(iter(work.calibration))[0][:1])
    policy = Policy.uniform(table.names, QSpec("uniform_symmetric", 4, "channel"),
                            QSpec("uniform_asymmetric", 8))
    trained = bitsmith.quantize(work.model, policy, calibration=work.calibration)
    with torch.no_grad():  # "fine-tuning"
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / "run"
    if kind == "search":
        save_result(trained, run)
    else:
        from bitsmith.export import save_packed

        run.mkdir()
        policy.save(run / "policy.yaml")
        save_packed(trained, run / "compressed.safetensors",
                    example_inputs=torch.zeros(1, 1, 16, 16))
        trained = load_packed(run / "compressed.safetensors", model=work.model)
    args = ["export", "--model", "small_cnn", "--checkpoint", str(tmp_path / "net.pt"),
            "--data", data, "--policy", str(run), "--out", str(tmp_path / "out"), "--batch",
            "1", "--runs", "3"]
    return work, trained.eval(), run, args


@pytest.mark.parametrize("kind", ["search", "compress"])
def test_a_training_run_exports_its_fine_tuned_model(tmp_path, kind):
    """``export --policy RUN_DIR`` of a search / compress run exports the model the run
    trained and scored, not the original weights re-quantized with its policy."""
    work, trained, run, args = _trained_run(tmp_path, kind)
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "using the fine-tuned" in _text(result)
    x = next(iter(work.test))[0]
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "out" / "model.safetensors")(x), trained(x))


@pytest.mark.parametrize("kind", ["search", "compress"])
def test_fine_tuned_weights_of_another_policy_are_refused(tmp_path, kind):
    work, _, run, args = _trained_run(tmp_path, kind)
    policy = Policy.load(run / "policy.yaml")
    first = next(iter(policy))
    edited = policy.with_layers({first: dataclasses.replace(policy[first], act=None)})
    (run / "policy.yaml").unlink()
    edited.save(run / "policy.yaml")
    result = runner.invoke(_app(), args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "belongs to another policy" in _text(result)
    (run / "result.json").write_text("{not json")
    if kind == "search":
        result = runner.invoke(_app(), args)
        assert result.exit_code == EXIT_BAD_INPUT and "cannot be read" in _text(result)
