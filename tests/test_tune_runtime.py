"""Runtime-aware tuning: ONNX Runtime backend (accuracy on the integer runtime, latency) and
bias correction."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tune_problem

from bitsmith.graph import quantized_layers
from bitsmith.reconstruct.bias import input_means, output_shift
from bitsmith.tune import TorchEvaluator, TuneConfig, TuneSpace, run_study

pytest.importorskip("onnxruntime")


SPACE = TuneSpace.from_dict({"scheme": ["symmetric_uint8"], "act_clip": ["minmax"],
                               "granularity": ["tensor", "channel"], "calib_size": [48],
                               "float_layers": ["none", "first"],
                               "reduced_range": [False, True]})


def test_ort_backend_measures_runtime_accuracy_and_latency() -> None:
    from bitsmith.tune.runtime import OnnxRuntimeBackend, OrtRunner

    model, calib, val = tune_problem()
    backend = OnnxRuntimeBackend(threads=1, latency_runs=5, warmup=1)
    ev = TorchEvaluator(model, calib, val, SPACE, stages=(1.0,), batch_size=48, backend=backend)
    ref = TorchEvaluator(model, calib, val, SPACE, stages=(1.0,), batch_size=48)
    assert ev.measures_latency and not ref.measures_latency
    config = {"granularity": "channel", "float_layers": "none", "reduced_range": False}
    m, r = ev.evaluate(config), ref.evaluate(config)
    assert m.latency_ms is not None and m.latency_ms > 0 and r.latency_ms is None
    # what ONNX Runtime's optimised graph runs, per layer (TinyNet: 4 integer layers)
    assert m.kernels == {"integer": 4, "weight_only": 0, "float": 0} and r.kernels is None
    # the integer runtime is close to the simulation, but it is the runtime that was measured
    assert abs(m.accuracy - r.accuracy) <= 10.0
    assert m.size_bytes == r.size_bytes and m.images == len(val[0])
    # the exported graph really runs integer kernels, calibrated on calibration inputs
    runner = backend.compile(ev.quantized_model(config), val[0][:48])
    assert isinstance(runner, OrtRunner) and runner.report.integer_layers >= 3
    out = runner(val[0][:5])
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_tune_pareto_accuracy_vs_latency_on_ort() -> None:
    from bitsmith.tune.runtime import OnnxRuntimeBackend

    model, calib, val = tune_problem()
    backend = OnnxRuntimeBackend(threads=1, latency_runs=3, warmup=1)
    ev = TorchEvaluator(model, calib, val, SPACE, stages=(1.0,), batch_size=48, backend=backend)
    res = run_study(ev, TuneConfig(objective="pareto", metric="latency", strategy="random",
                                   n_trials=3, progress=False, save_model=False))
    done = [t for t in res.trials if t.state == "COMPLETE"]
    assert len(done) == 3 and res.front
    assert all(t.measurement["latency_ms"] > 0 for t in done)


def test_torch_evaluator_refuses_latency_metric() -> None:
    model, calib, val = tune_problem()
    ev = TorchEvaluator(model, calib, val, SPACE, stages=(1.0,), batch_size=48)
    with pytest.raises(Exception, match="latency"):
        run_study(ev, TuneConfig(objective="pareto", metric="latency", n_trials=1,
                                 progress=False))


def test_bias_correction_removes_mean_output_shift() -> None:
    model, calib, val = tune_problem()
    space = TuneSpace.from_dict({"preset": "mixed", "calib_size": [48], "weight_bits": [2],
                                   "act_clip": ["minmax"], "weight_clip": ["minmax"],
                                   "bias_correction": [False, True]})
    ev = TorchEvaluator(model, calib, val, space, stages=(1.0,), batch_size=48)
    base = {**{k: v[0] for k, v in space.dimensions(ev.layer_names).items()}}
    plain = ev.quantized_model({**base, "bias_correction": False})
    fixed = ev.quantized_model({**base, "bias_correction": True})
    means = ev.means(48)
    for name, layer in quantized_layers(fixed).items():
        ref = quantized_layers(plain)[name]
        wq = ref.weight_quantizer(ref.weight)
        shift = output_shift(ref, wq - ref.weight, means[name])
        assert torch.allclose(layer.bias, ref.bias - shift, atol=1e-6)
    # on the float model's layer inputs the corrected layer's mean output equals the float one
    layer, ref = quantized_layers(fixed)["pw"], quantized_layers(plain)["pw"]
    inputs = {}
    h = ev._work.pw.register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0]))
    with torch.no_grad():
        ev._work(calib)
    h.remove()
    x = inputs["x"]
    with torch.no_grad():
        w = ev._work.pw.weight
        want = torch.nn.functional.conv2d(x, w, ev._work.pw.bias).mean((0, 2, 3))
        got = torch.nn.functional.conv2d(x, layer.weight_quantizer(layer.weight),
                                         layer.bias).mean((0, 2, 3))
        before = torch.nn.functional.conv2d(x, ref.weight_quantizer(ref.weight),
                                            ref.bias).mean((0, 2, 3))
    assert (got - want).abs().max() < 1e-4 < (before - want).abs().max()
    # evaluated accuracy differs between the two (different models) and both are cached
    a, b = ev.evaluate({**base, "bias_correction": False}), ev.evaluate(
        {**base, "bias_correction": True})
    assert not math.isnan(a.accuracy) and not math.isnan(b.accuracy)
    assert ev.evaluate({**base, "bias_correction": True}).cached


def test_input_means_of_depthwise_and_linear() -> None:
    model, calib, _ = tune_problem()
    means = input_means(model, ["dw", "fc"], [calib])
    assert means["dw"].shape == (8,) and means["fc"].shape == (16,)
    x = torch.relu(model.bn1(model.conv1(calib)))
    assert torch.allclose(means["dw"], x.mean((0, 2, 3)), atol=1e-5)
