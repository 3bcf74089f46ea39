"""The rounding knob in the producers: tuner space and evaluator, measured sensitivity and the
ILP, ``analyze`` with its run directory and report, ``autoquantize``, the command line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tune_problem

import bitsmith
from bitsmith import QSpec
from bitsmith.allocation import allocate, bit_candidates
from bitsmith.cli import main
from bitsmith.cost import Budget
from bitsmith.errors import EXIT_BAD_INPUT, InputError
from bitsmith.policy import INT8, Policy, Rounding
from bitsmith.sensitivity import measure_sensitivity
from bitsmith.tune import TorchEvaluator, TuneSpace
from bitsmith.tune.errors import SpaceError

pytestmark = pytest.mark.usefixtures("one_thread")
FEW = 15  # reconstruction steps: enough to run every path, not to learn much


def _space(**kw) -> TuneSpace:
    return TuneSpace(scheme=("symmetric_uint8",), act_clip=("minmax",), granularity=("channel",),
                     calib_size=(40,), float_layers=("none",), weight_bits=(3,), **kw)


def test_tune_space_rounding_dimension_maps_to_the_policy():
    space = _space(rounding=("nearest", "qdrop"), rounding_iterations=FEW)
    names = ["a", "b"]
    base = {k: v[0] for k, v in space.dimensions(names).items()}
    assert space.to_policy(base, names).rounding == Rounding()
    learned = space.to_policy({**base, "rounding": "qdrop"}, names).rounding
    assert learned.method == "qdrop" and learned.iterations == FEW
    assert "rounding" not in json.loads(_space().fingerprint())   # old studies still resume
    with pytest.raises(SpaceError, match="rounding: unknown choice"):
        _space(rounding=("magic",))
    with pytest.raises(SpaceError, match="rounding_iterations"):
        _space(rounding_iterations=0)
    with pytest.raises(SpaceError, match="rounding"):
        TuneSpace.from_dict({"rounding": ["adaround"], "rounding_iterations": "many"})


def test_evaluator_with_learned_rounding_equals_quantize(tmp_path):
    model, calib, val = tune_problem()
    space = _space(rounding=("adaround",), rounding_iterations=FEW, bias_correction=(True,))
    evaluator = TorchEvaluator(model, calib, val, space, batch_size=16,
                               cache=tmp_path / "recon")
    config = {k: v[0] for k, v in space.dimensions(evaluator.layer_names).items()}
    m = evaluator.evaluate(config)
    policy = Policy.from_yaml(evaluator.policy(config).to_yaml())
    rebuilt = bitsmith.quantize(model, policy, calibration=evaluator.calibration_data(40))
    assert rebuilt.bitsmith.reconstruction.cached_units == 0
    with torch.no_grad():
        acc = 100.0 * float((rebuilt(val[0]).argmax(1) == val[1]).float().mean())
        assert torch.equal(rebuilt(val[0]), evaluator.quantized_model(config)(val[0]))
    assert m.accuracy == pytest.approx(acc)
    assert len(list((tmp_path / "recon").glob("*.safetensors"))) == len(evaluator.layer_names)


def test_measured_sensitivity_after_reconstruction_feeds_the_ilp(tmp_path, tiny_net, images):
    labels = torch.randint(0, 10, (len(images),))
    stats = bitsmith.collect_stats(tiny_net, [images], keep_inputs=True)
    table = bitsmith.prepare(tiny_net, images[:1])[1]
    space = bit_candidates(table, QSpec("uniform_symmetric", 4, "channel"), (2, 4),
                           QSpec("uniform_asymmetric", 8), layers=table.names[1:-1])
    base = Policy({table.names[0]: INT8, table.names[-1]: INT8},
                  rounding=Rounding("adaround", iterations=FEW, inputs="float"))
    cache = tmp_path / "recon"
    sens = measure_sensitivity(tiny_net, space, [(images, labels)], calibration=stats,
                               base=base, cache=cache)
    assert sens.meta["measured_rounding"].startswith("adaround")
    units = len(list(cache.glob("*.safetensors")))
    assert units == 2 + space.size  # the fixed first/last layers once, each candidate once
    again = measure_sensitivity(tiny_net, space, [(images, labels)], calibration=stats,
                                base=base, cache=cache)
    assert again.scores == sens.scores and len(list(cache.glob("*.safetensors"))) == units
    alloc = allocate(space, sens, Budget(avg_weight_bits=7.0), base=base)
    assert alloc.policy.rounding == base.rounding   # the base's choices carry over


@pytest.mark.filterwarnings("ignore:validation guard")
def test_analyze_with_rounding_writes_reconstruction_and_report(tmp_path):
    from bitsmith.analyze import AnalyzeConfig, analyze
    from bitsmith.rundir import load_run

    model, calib, val = tune_problem()
    cfg = AnalyzeConfig(bits=(2, 4), methods=("measured",), avg_bits=(3.0,), rounding="brecq",
                        rounding_iterations=FEW, first_last="int8")
    result = analyze(model, calib, val, config=cfg, out_dir=tmp_path / "run")
    assert result.policy.rounding.method == "brecq"
    assert "brecq" in result.summary["reconstruction"]
    run = load_run(tmp_path / "run")
    assert run.reconstruction["method"] == "brecq" and run.reconstruction["units"]
    assert run.policy.rounding.method == "brecq"
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Learned rounding (reconstruction)" in html
    assert any((tmp_path / "run" / "reconstruction").glob("*.safetensors"))


def test_autoquantize_rounding_checks():
    model, calib, val = tune_problem()
    with pytest.raises(InputError, match="rounding 'magic' is unknown"):
        bitsmith.autoquantize(model, calib, val, rounding="magic")
    with pytest.raises(InputError, match="post-training methods only"):
        bitsmith.autoquantize(model, calib, val, method="search", rounding="adaround",
                              train_data=[val])


def test_cli_refuses_an_unknown_rounding():
    assert main(["analyze", "--model", "digits", "--rounding", "magic"]) == EXIT_BAD_INPUT
    assert main(["tune", "--model", "digits", "--rounding", "nearest,magic"]) == EXIT_BAD_INPUT
