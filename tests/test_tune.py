"""Tuner: search space, evaluator, objectives, outputs, CLI and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import typer
from conftest import tune_problem
from safetensors.torch import load_file
from typer.testing import CliRunner

from bitsmith import LayerSpec, Policy, QSpec, quantize
from bitsmith.cost import InfeasibleBudgetError
from bitsmith.pareto import pareto_front
from bitsmith.report import write_report
from bitsmith.rundir import load_run
from bitsmith.tune import (
    Objective,
    SpaceError,
    StorageError,
    TorchEvaluator,
    TuneConfig,
    TuneError,
    TuneSpace,
    run_study,
)
from bitsmith.tune.cli import EXIT_BAD_INPUT, EXIT_INFEASIBLE
from bitsmith.tune.space import FLOAT_CHOICE
from bitsmith.tune.study import open_storage

SMALL = TuneSpace.from_dict({"preset": "mixed", "calib_size": [16, 48],
                               "weight_bits": [2, 4, 8], "act_clip": ["minmax", "percentile"],
                               "weight_clip": ["minmax"]})


@pytest.fixture(scope="module")
def evaluator() -> TorchEvaluator:
    model, calib, val = tune_problem()
    return TorchEvaluator(model, calib, val, SMALL, stages=(0.5, 1.0), batch_size=32)


# ------------------------------------------------------------------ space
def test_quantune_space_contains_papers_knobs() -> None:
    q = TuneSpace.quantune()
    assert set(q.scheme) == {"asymmetric", "symmetric", "symmetric_uint8", "symmetric_pow2"}
    assert set(q.act_clip) == {"minmax", "entropy"}
    assert q.size(["a", "b"]) == 4 * 2 * 2 * 3 * 2
    full = TuneSpace()                  # Quantune + percentile/MSE + first-layer-only float
    assert {"percentile", "mse"} <= set(full.act_clip) and full.size(["a"]) == 288


def test_mixed_space_is_per_layer_and_yaml_roundtrip(tmp_path: Path) -> None:
    names = ["conv1", "dw", "pw", "fc"]
    dims = SMALL.dimensions(names)
    assert [f"w:{n}" for n in names] == [k for k in dims if k.startswith("w:")]
    path = tmp_path / "space.yaml"
    path.write_text("preset: mixed\nweight_bits: [3, 4, float]\ncalib_size: [8]\n")
    sp = TuneSpace.load(path)
    assert sp.weight_bits == (3, 4, FLOAT_CHOICE) and sp.per_layer_weight_bits
    config = {**{k: v[0] for k, v in sp.dimensions(names).items()}, "w:fc": FLOAT_CHOICE}
    policy = sp.to_policy(config, names)
    assert policy["fc"].weight is None and policy["fc"].act is not None
    assert policy["conv1"].weight.bits == 3 and policy["conv1"].weight.granularity == "channel"


def test_scheme_mapping_symmetric_uint8_and_pow2() -> None:
    sp = TuneSpace()
    base = {"act_clip": "minmax", "weight_clip": "minmax", "granularity": "tensor",
            "calib_size": 1, "float_layers": "none", "weight_bits": 8, "act_bits": 8}
    names = ["a", "b"]
    u8 = sp.to_policy({**base, "scheme": "symmetric_uint8"}, names, {"a": True, "b": False})
    assert u8["a"].act.scheme == "uniform_symmetric"       # signed input: signed grid
    assert u8["b"].act.scheme == "uniform_asymmetric"      # post-ReLU: unsigned, zero point 0
    assert u8["b"].weight.scheme == "uniform_symmetric"
    p2 = sp.to_policy({**base, "scheme": "symmetric_pow2"}, names)
    assert p2["a"].weight.pow2_scale and p2["b"].act.pow2_scale
    edge = sp.to_policy({**base, "scheme": "asymmetric", "float_layers": "first_last"}, names)
    assert edge["a"].is_float and edge["b"].is_float


def test_warm_start_policy_keeps_its_clipping_and_granularity() -> None:
    """``--init-policy``: the warm-start trial measures the given policy, not the given bit
    widths under clipping the sampler drew (MSE weight clipping costs ResNet-32 5 points)."""
    sp = TuneSpace.mixed_precision()
    names = ["a", "b", "c"]
    w4, a8 = QSpec("uniform_symmetric", 4, "channel"), QSpec("uniform_asymmetric", 8)
    policy = Policy({"a": LayerSpec(w4, a8), "b": LayerSpec(w4.replace(bits=3), a8),
                     "c": LayerSpec(w4, a8.replace(observer="mse"))})
    config = sp.config_from_policy(policy, names)
    assert config == {"weight_clip": "minmax", "granularity": "channel", "w:a": 4, "w:b": 3,
                      "w:c": 4}                  # the layers disagree on act_clip: left open
    assert sp.to_policy({**{k: v[0] for k, v in sp.dimensions(names).items()}, **config},
                        names)["b"].weight == w4.replace(bits=3)
    odd = Policy({n: LayerSpec(w4.replace(observer="percentile", percentile=99.0), a8)
                  for n in names})               # a percentile the space does not offer
    assert "weight_clip" not in sp.config_from_policy(odd, names)
    assert TuneSpace().config_from_policy(policy, names) == {
        "weight_clip": "minmax", "granularity": "channel"}   # global bits: none per layer


@pytest.mark.parametrize("bad", [
    {"weight_bits": []}, {"scheme": ["nope"]}, {"act_clip": ["max"]}, {"calib_size": [0]},
    {"weight_bits": [1]}, {"float_layers": ["middle"]}, {"unknown_knob": [1]},
    {"preset": "huge"}, {"bias_correction": ["yes"]}, {"reduced_range": [1]}])
def test_bad_or_empty_space_is_a_clear_error(bad: dict) -> None:
    with pytest.raises(SpaceError):
        TuneSpace.from_dict(bad)


def test_boolean_knobs_map_to_policy_and_keep_presets() -> None:
    assert TuneSpace.quantune().size(["a", "b"]) == 96        # off by default everywhere
    sp = TuneSpace.from_dict({"preset": "mixed", "reduced_range": [False, True],
                                "bias_correction": [True, False]})
    names = ["a", "b"]
    base = {k: v[0] for k, v in sp.dimensions(names).items()}
    assert base["bias_correction"] is True and base["reduced_range"] is False
    assert not sp.to_policy(base, names)["a"].weight.reduced_range
    rr = sp.to_policy({**base, "reduced_range": True}, names)
    assert rr["a"].weight.reduced_range and not rr["a"].act.reduced_range
    # bias correction changes the model, so it is part of the Policy
    assert sp.to_policy(base, names).bias_correction
    assert not sp.to_policy({**base, "bias_correction": False}, names).bias_correction
    assert sp.to_policy(base, names).calib_size == base["calib_size"]


def test_grid_refuses_huge_space() -> None:
    with pytest.raises(SpaceError, match="too many"):
        next(TuneSpace.mixed_precision().grid([f"l{i}" for i in range(20)]))


# --------------------------------------------------------------- evaluator
def test_evaluator_matches_plain_quantize_and_caches(evaluator: TorchEvaluator) -> None:
    names = evaluator.layer_names
    config = {k: v[-1] for k, v in SMALL.dimensions(names).items()}   # 8-bit, 48 images
    m = evaluator.evaluate(config)
    qmodel = quantize(evaluator.model, evaluator.policy(config), calibration=evaluator.stats(48))
    x, y = evaluator._val_x, evaluator._val_y
    with torch.no_grad():
        ref = 100.0 * (qmodel(x).argmax(1) == y).float().mean().item()
    assert m.accuracy == pytest.approx(ref) and m.images == len(x)
    assert m.drop == pytest.approx(evaluator.fp32_accuracy - m.accuracy)
    assert evaluator.stats(48) is evaluator.stats(48)            # statistics reused
    again = evaluator.evaluate(config)
    assert again.cached and again.accuracy == m.accuracy
    assert m.compression > 2.0 and m.size_bytes < m.fp32_bytes   # tiny net: scales weigh


def test_evaluator_stops_hopeless_configuration_after_first_stage(
        evaluator: TorchEvaluator) -> None:
    names = evaluator.layer_names
    config = {k: v[0] for k, v in SMALL.dimensions(names).items()}    # 2-bit everywhere
    seen = []

    def stop(step: int, images: int, acc: float, fp32: float) -> bool:
        seen.append((step, images))
        return True
    m = evaluator.evaluate(config, on_stage=stop)
    assert m.pruned and m.images == evaluator.bounds[0] < len(evaluator._val_x)
    assert seen == [(0, evaluator.bounds[0])]


def test_evaluator_rejects_bad_data() -> None:
    model, calib, val = tune_problem()
    with pytest.raises(TuneError, match="calib_size"):
        TorchEvaluator(model, calib[:8], val, SMALL)
    with pytest.raises(TuneError, match="labels"):
        TorchEvaluator(model, calib, val[0], SMALL)


# --------------------------------------------------------------- objectives
def test_objective_values_and_bad_tolerance() -> None:
    with pytest.raises(TuneError, match="tolerance"):
        Objective("min_cost", tolerance=-0.5)
    with pytest.raises(TuneError, match="budget"):
        Objective("max_accuracy", budget=None)
    o = Objective("min_cost", tolerance=1.0)
    assert o.score(90.0, 0.5, 100.0, 400.0) == pytest.approx(0.25)
    assert o.score(88.0, 2.5, 10.0, 400.0) == pytest.approx(2.5)       # infeasible: > 1
    b = Objective("max_accuracy", budget=100.0)
    assert b.score(90.0, 0.5, 100.0, 400.0) == 90.0 and b.score(95.0, 0, 150.0, 400.0) < 0
    assert pareto_front([10, 20, 30, 5], [90, 91, 89, 92]) == [3]


# ------------------------------------------------------------------- tune
def test_tune_min_size_writes_outputs(tmp_path: Path, evaluator: TorchEvaluator) -> None:
    res = run_study(evaluator, TuneConfig(tolerance=3.0, strategy="xgboost", n_trials=6,
                                          progress=False), out_dir=tmp_path)
    assert sum(res.counts().values()) == 6 and res.feasible
    best = res.best.measurement
    assert best["drop"] <= 3.0
    feasible = [t for t in res.trials if t.feasible]
    assert best["size_bytes"] == min(t.measurement["size_bytes"] for t in feasible)
    policy = Policy.load(tmp_path / "best_policy.yaml")
    assert policy == Policy.load(tmp_path / "best_policy.json") == evaluator.policy(
        res.best.config)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.endswith("weight_quantizer.p_scale") for k in state)
    # a bitsmith.run/1 directory: completed trials in trials.jsonl, every trial in trials.csv
    completed = [t for t in res.trials if t.state == "COMPLETE"]
    lines = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [t.number for t in completed]
    assert all(r["source"] == "tuner:xgboost" and "m.accuracy" in r for r in lines)
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 1 + 6
    run = load_run(tmp_path)
    assert run.run["producer"] == "bitsmith tune" and run.policy == policy
    assert run.chosen["name"] == f"trial {res.best.number}"
    assert run.chosen["size_bytes"] == best["size_bytes"]
    assert len(run.search) == len(completed)
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["trial"] == res.best.number
    # resume: the same call again finds the budget spent and runs nothing new
    again = run_study(evaluator, TuneConfig(tolerance=3.0, strategy="xgboost", n_trials=6,
                                            progress=False), out_dir=tmp_path)
    assert [t.number for t in again.trials] == [t.number for t in res.trials]
    assert len((tmp_path / "trials.jsonl").read_text().splitlines()) == len(completed)
    # the report reads the tuner's run directory
    html = write_report(tmp_path)
    assert html.is_file() and "trial" in html.read_text()


@pytest.mark.parametrize("strategy", ["random", "grid", "genetic", "tpe"])
def test_every_strategy_runs_on_a_study(strategy: str) -> None:
    model, calib, val = tune_problem()
    space = TuneSpace.from_dict({"calib_size": [16], "float_layers": ["none"],
                                   "act_clip": ["minmax"], "scheme": ["symmetric", "asymmetric"],
                                   "weight_bits": [4], "act_bits": [8]})
    ev = TorchEvaluator(model, calib, val, space, stages=(1.0,))
    res = run_study(ev, TuneConfig(objective="max_accuracy", budget=1e9, strategy=strategy,
                                   n_trials=4, progress=False))
    assert res.counts().get("COMPLETE") == 4 and res.best is not None
    if strategy == "grid":                            # 2 schemes x 2 granularities, no repeat
        assert len({json.dumps(t.config, sort_keys=True) for t in res.trials}) == 4


def test_pareto_objective_reports_front(evaluator: TorchEvaluator) -> None:
    res = run_study(evaluator, TuneConfig(objective="pareto", strategy="random", n_trials=6,
                                          progress=False))
    accs = [t.measurement["accuracy"] for t in res.front]
    sizes = [t.measurement["size_bytes"] for t in res.front]
    assert sizes == sorted(sizes) and accs == sorted(accs) and res.best in res.front


def test_unreachable_budget_is_infeasible_with_closest(evaluator: TorchEvaluator) -> None:
    with pytest.raises(InfeasibleBudgetError, match="infeasible") as info:
        run_study(evaluator, TuneConfig(objective="max_accuracy", budget=10.0, n_trials=3,
                                        progress=False))
    assert info.value.measurement.size_bytes > 10 and info.value.closest


def test_zero_tolerance_unmet_reports_closest(evaluator: TorchEvaluator) -> None:
    space = TuneSpace.from_dict({"preset": "mixed", "calib_size": [16], "weight_bits": [2],
                                   "act_bits": [2], "act_clip": ["minmax"],
                                   "weight_clip": ["minmax"]})
    model, calib, val = tune_problem()
    ev = TorchEvaluator(model, calib, val, space, stages=(1.0,))
    res = run_study(ev, TuneConfig(tolerance=0.0, strategy="random", n_trials=2,
                                   progress=False))
    assert not res.feasible and res.closest is not None
    assert res.closest.measurement["drop"] > 0 and "INFEASIBLE" in res.summary()


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x/y",
                                 "sqlite:////nonexistent-dir/sub/study.db"])
def test_storage_that_cannot_be_opened(url: str) -> None:
    with pytest.raises(StorageError, match="storage"):
        open_storage(url)


def test_storage_retries_when_another_worker_creates_the_schema(tmp_path: Path,
                                                                monkeypatch) -> None:
    """Two workers opening a fresh PostgreSQL database at once: the loser's CREATE TABLE fails
    with DuplicateTable (a ProgrammingError); it retries and finds the schema."""
    import sqlalchemy.exc

    from bitsmith.tune import study as study_module

    real, calls = study_module.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.ProgrammingError(
                "CREATE TABLE studies", {}, Exception('relation "studies" already exists'))
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", racing)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert len(calls) == 2 and storage is not None


def test_study_with_other_problem_is_refused(tmp_path: Path, evaluator: TorchEvaluator) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    run_study(evaluator, TuneConfig(tolerance=3.0, strategy="random", n_trials=1, storage=url,
                                    progress=False))
    with pytest.raises(TuneError, match="different problem"):
        run_study(evaluator, TuneConfig(tolerance=1.0, strategy="random", n_trials=1,
                                        storage=url, progress=False))


# -------------------------------------------------------------------- CLI
@pytest.fixture
def cli() -> typer.Typer:
    from bitsmith.cli import app

    return app


@pytest.mark.parametrize("args", [["--tolerance", "-1"], ["--storage", "nosuchdb://x"],
                                  ["--objective", "fastest"], ["--strategy", "anneal"],
                                  ["--space", "missing.yaml"], ["--model", "vgg"],
                                  ["--metric", "nosuch"],
                                  ["--backend", "tensorrt"]])
def test_cli_bad_input_exits_2(cli: typer.Typer, args: list[str], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["tune", "--model", "digits", "--out", str(tmp_path),
                                   "--n-trials", "1", "--no-progress", "--epochs", "1", *args])
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "error" in res.output


def test_cli_infeasible_budget_exits_3(cli: typer.Typer, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("preset: mixed\ncalib_size: [16]\n")
    res = CliRunner().invoke(cli, ["tune", "--model", "digits", "--out", str(tmp_path),
                                   "--objective", "max-accuracy", "--budget", "100",
                                   "--space", str(space), "--n-trials", "1", "--no-progress",
                                   "--epochs", "1"])
    assert res.exit_code == EXIT_INFEASIBLE, res.output
    assert "infeasible" in res.output and not math.isnan(EXIT_INFEASIBLE)


def test_timeout_stops_gracefully_and_resume_finishes(tmp_path: Path,
                                                      evaluator: TorchEvaluator) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    kw = {"tolerance": 3.0, "strategy": "random", "n_trials": 4, "storage": url,
          "progress": False}
    first = run_study(evaluator, TuneConfig(timeout=1e-9, **kw))
    assert first.stopped == "timeout" and first.counts() == {"WAITING": 4}
    second = run_study(evaluator, TuneConfig(**kw))
    assert second.stopped == "budget"
    assert sum(second.counts().get(s, 0) for s in ("COMPLETE", "PRUNED")) == 4


def test_every_trial_pruned_is_infeasible_and_says_what_to_do() -> None:
    """Trials stopped after the first stage have no full measurement: with no finished
    trial the run is infeasible (exit 3) and the message names the ways out."""
    from bitsmith.errors import InfeasibleError
    from bitsmith.tune.api import _result
    from bitsmith.tune.results import TrialRecord, TuneResult

    pruned = [TrialRecord(i, "PRUNED", {}, {"accuracy": 40.0, "drop": 50.0}, [50.0], None, 1.0)
              for i in range(3)]
    study = TuneResult("s", None, Objective(tolerance=1.0), 90.0, pruned, None, None, [], 3,
                       "n_trials")
    with pytest.raises(InfeasibleError, match="all 3 trials .* were pruned.*--no-prune"):
        _result(None, study, TuneConfig(), {}, None, 0.0)  # type: ignore[arg-type]


def test_zero_tolerance_passes_the_validation_guard() -> None:
    from bitsmith.scoring import check_validation

    assert not check_validation(90.0, 96, 0.0).fired  # no division by the zero tolerance
