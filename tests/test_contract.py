"""One contract for every producer (issue 14, part 4): the same inputs, one result shape.

``tune``, ``analyze``, ``search``, ``compress`` and ``bitsmith.autoquantize`` take
``(model, calibration, validation, *, evaluate=None, config=..., out_dir=None)`` (training
producers one more named argument, ``train_data``) and return a ``QuantizationResult`` with
``.policy``, ``.model``, ``.summary`` and ``.run_dir``; a metric failure inside a trial fails
that trial only; the validation guard flags a memorised validation set.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import TinyNet, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bitsmith
from bitsmith.analyze import AnalyzeConfig, analyze
from bitsmith.compress import CompressConfig, compress
from bitsmith.cost import Budget, estimate, within_budget
from bitsmith.policy import Policy
from bitsmith.result import QuantizationResult
from bitsmith.rundir import load_run
from bitsmith.scoring import ValidationWarning, check_validation
from bitsmith.search import SearchConfig, SupernetSpace, search
from bitsmith.training import TrainConfig
from bitsmith.tune import TuneConfig, tune

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = {"preset": "mixed", "weight_bits": [2, 4, 8], "calib_size": [32],
         "act_clip": ["minmax"], "weight_clip": ["minmax"]}


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, TensorDataset, TensorDataset]:
    """TinyNet; 48 calibration images; 96 labelled validation images (the labels are a
    noisy copy of the float model's predictions, so FP32 is not saturated)."""
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    x = torch.randn(144, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    return model, TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])


def _check(result: QuantizationResult, model: nn.Module, out, producer: str) -> None:
    assert isinstance(result, QuantizationResult)
    assert isinstance(result.policy, Policy) and len(result.policy) > 0
    assert isinstance(result.model, nn.Module) and result.model is not model
    assert not result.model.training
    assert result.model.bitsmith.policy.fingerprint() == result.policy.fingerprint()
    json.dumps(result.summary)  # plain data
    s = result.summary
    assert s["producer"] == producer and s["rule"] and s["chosen"]
    assert s["validation"]["fp32"] is not None and "guard" in s
    assert s["cost"]["size_bytes"] == estimate(result.model.bitsmith.layer_table,
                                               result.policy).size_bytes or producer == "compress"
    assert result.run_dir == out
    run = load_run(out)
    assert run.policy.fingerprint() == result.policy.fingerprint()
    assert run.run["rule"] == s["rule"] and run.chosen is not None
    x = torch.randn(4, 3, 8, 8)
    assert result.model(x).shape == (4, 10)


def test_tune_returns_the_result_shape(problem, tmp_path):
    model, calib, val = problem
    cfg = TuneConfig(space=SPACE, n_trials=3, strategy="random", progress=False, tolerance=6.0)
    result = tune(model, calib, val, config=cfg, out_dir=tmp_path)
    _check(result, model, tmp_path, "tune")
    assert result.details.best is not None


def test_analyze_returns_the_result_shape(problem, tmp_path):
    model, calib, val = problem
    cfg = AnalyzeConfig(bits=(2, 4, 8), methods=("measured",), avg_bits=(5.0,),
                        sensitivity_examples=32, report=False)
    result = analyze(model, DataLoader(calib, 16), DataLoader(val, 32), config=cfg,
                     out_dir=tmp_path)
    _check(result, model, tmp_path, "analyze")
    assert within_budget(estimate(result.model.bitsmith.layer_table, result.policy),
                         Budget.from_dict(result.summary["budget"]))


def test_search_returns_the_result_shape(problem, tmp_path):
    model, calib, val = problem
    steps = TrainConfig(max_steps=2, lr=1e-3, progress=False, weight_decay=0.0)
    cfg = SearchConfig(method="ssps", budget=Budget(avg_weight_bits=4.0),
                       space=SupernetSpace.uniform_bits((2, 4, 8), (8,), observer="minmax",
                                                        first_last="same"),
                       search=steps, qat=steps, method_kw={"threshold": 0.3})
    result = search(model, DataLoader(calib, 16), val, config=cfg, out_dir=tmp_path,
                    train_data=DataLoader(calib, 16, shuffle=True))
    _check(result, model, tmp_path, "search")
    assert result.summary["cost"]["avg_weight_bits"] <= 4.0 + 1e-9


def test_compress_returns_the_result_shape(problem, tmp_path):
    model, calib, val = problem
    cfg = CompressConfig(sparsity=0.5, ratio=4.0, min_params=0, calib_batches=2,
                         train=TrainConfig(max_steps=2, lr=1e-3, optimizer="adamw",
                                           progress=False))
    result = compress(model, DataLoader(calib, 16), val, config=cfg, out_dir=tmp_path,
                      train_data=DataLoader(calib, 16, shuffle=True))
    _check(result, model, tmp_path, "compress")
    assert result.summary["cost"]["size_bytes"] <= result.summary["budget"]["size_bytes"]


def test_autoquantize_returns_the_result_shape(problem, tmp_path):
    model, calib, val = problem
    budget = Budget(avg_weight_bits=5.0)
    result = bitsmith.autoquantize(model, calib, val, budget=budget, trials=3, out_dir=tmp_path)
    _check(result, model, tmp_path, "tune")
    assert result.summary["method"] == "auto" and result.summary["warm_starts"] >= 2
    assert result.summary["cost"]["size_bytes"] <= result.summary["budget"]["limit"]


def test_every_producer_takes_a_user_metric(problem, tmp_path):
    """``evaluate(model) -> float`` replaces top-1; the FP32 score is the metric's."""
    model, calib, val = problem
    x = val.tensors[0]

    def agreement(m: nn.Module) -> float:  # higher is better, not a top-1 on labels
        with torch.no_grad():
            return float((m(x).argmax(1) == model(x).argmax(1)).float().mean())

    cfg = TuneConfig(space=SPACE, n_trials=2, strategy="random", progress=False, tolerance=0.5)
    result = tune(model, calib, None, evaluate=agreement, config=cfg)
    assert result.summary["validation"]["fp32"] == 1.0
    assert "agreement" in result.summary["validation"]["metric"]
    a = analyze(model, DataLoader(calib, 16), DataLoader(val, 32), evaluate=agreement,
                config=AnalyzeConfig(bits=(4, 8), methods=("fisher",), avg_bits=(6.0,),
                                     sensitivity_examples=32, report=False))
    assert a.summary["validation"]["fp32"] == 1.0 and 0 <= a.summary["validation"]["chosen"] <= 1


def test_a_metric_failure_fails_that_trial_and_loses_nothing(problem, tmp_path):
    model, calib, val = problem
    calls = {"n": 0}

    def flaky(m: nn.Module) -> float:
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("the metric server is down")
        return 1.0

    cfg = TuneConfig(space=SPACE, n_trials=4, strategy="random", progress=False, tolerance=1.0)
    result = tune(model, calib, val, evaluate=flaky, config=cfg, out_dir=tmp_path)
    states = result.details.counts()
    assert states.get("FAIL", 0) >= 1 and states.get("COMPLETE", 0) >= 1
    assert (tmp_path / "trials.csv").read_text().count("metric server is down") >= 1
    assert load_run(tmp_path).trials  # the completed trials are all there


def test_search_keeps_its_trained_model_when_the_metric_fails(problem, tmp_path):
    model, calib, val = problem
    first = {"done": False}

    def fails_after_fp32(m: nn.Module) -> float:
        if first["done"]:
            return "n/a"  # not a number
        first["done"] = True
        return 1.0

    steps = TrainConfig(max_steps=1, lr=1e-3, progress=False, weight_decay=0.0)
    cfg = SearchConfig(method="qpl", budget=Budget(avg_weight_bits=6.0), search=steps,
                       qat=steps, space=SupernetSpace.uniform_bits((4, 8), (8,),
                                                                   observer="minmax",
                                                                   first_last="same"))
    with pytest.warns(RuntimeWarning, match="could not be scored"):
        result = search(model, DataLoader(calib, 16), val, evaluate=fails_after_fp32,
                        config=cfg, out_dir=tmp_path, train_data=DataLoader(calib, 16))
    assert "not a number" in result.summary["metric_error"]
    assert (tmp_path / "weights.safetensors").is_file() and (tmp_path / "policy.yaml").is_file()
    trial = load_run(tmp_path).trials[0]
    assert trial["state"] == "FAIL" and math.isnan(trial["accuracy"])


# ----------------------------------------------------------------------- the guard
def test_guard_rule() -> None:
    with pytest.warns(ValidationWarning, match="memorised"):
        assert check_validation(99.8, 5000, 1.0).saturated
    with pytest.warns(ValidationWarning, match="at least 500 validation examples"):
        assert check_validation(90.0, 200, 1.0).too_small
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_validation(90.0, 2000, 1.0).fired
        assert not check_validation(1.0, 10, None, is_top1=False).fired  # a user metric


def test_guard_fires_on_a_memorised_set_and_not_on_a_held_out_one(tmp_path):
    """A model trained to memorise its training images: validating on them fires the guard
    (recorded in the summary and run.json); held-out images of the same task do not."""
    torch.manual_seed(0)
    teacher = randomize_bn(TinyNet())
    x = torch.randn(640, 3, 8, 8)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    y[::7] = (y[::7] + 3) % 10  # label noise: a held-out set cannot be learned perfectly
    train = TensorDataset(x[:128], y[:128])
    student = TinyNet()
    opt = torch.optim.Adam(student.parameters(), 1e-2)
    for _ in range(300):  # memorise the 128 training images
        loss = nn.functional.cross_entropy(student(x[:128]), y[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()
    cfg = TuneConfig(space=SPACE, n_trials=1, strategy="random", progress=False)
    with pytest.warns(ValidationWarning, match="memorised"):
        memorised = tune(student, train, train, config=cfg, out_dir=tmp_path / "m")
    guard = memorised.summary["guard"]
    assert guard["fired"] and guard["saturated"] and guard["fp32"] >= 99.5
    assert load_run(tmp_path / "m").run["guard"]["saturated"]
    held_out = TensorDataset(x[128:], y[128:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)
        honest = tune(student, train, held_out, config=cfg)
    assert not honest.summary["guard"]["fired"] and honest.summary["guard"]["fp32"] < 99.5
