from __future__ import annotations

import pytest

from bitsmith.policy import FLOAT, LayerSpec, Policy, PolicyError, QSpec, build_policy


def test_roundtrip_json_yaml_and_files(tmp_path):
    p = build_policy(["a", "b", "c"], QSpec(bits=4, granularity="channel", observer="mse"),
                     QSpec("uniform_asymmetric", 6, observer="percentile", percentile=99.9),
                     first_last="int8")
    assert Policy.from_json(p.to_json()) == p
    assert Policy.from_yaml(p.to_yaml()) == p
    for suffix in (".json", ".yaml"):
        assert Policy.load(p.save(tmp_path / f"p{suffix}")) == p
    assert hash(Policy.from_yaml(p.to_yaml())) == hash(p)
    assert p["a"].weight.bits == 8 and p["b"].weight.bits == 4


def test_float_layers_and_diff():
    p = Policy.uniform(["a", "b"])
    q = p.with_layers({"b": FLOAT})
    assert q["b"].is_float
    assert set(p.diff(q)) == {"b"}
    assert Policy.from_yaml(q.to_yaml())["b"].is_float
    assert "float" in q.table()


@pytest.mark.parametrize("kwargs, needle", [
    ({"scheme": "nope"}, "unknown quantization scheme 'nope'"),
    ({"bits": 0}, "bits=0 is out of range"),
    ({"bits": 17}, "bits=17 is out of range"),
    ({"bits": 4.5}, "bits must be an integer"),
    ({"granularity": "row"}, "granularity='row' is unknown"),
    ({"observer": "magic"}, "observer='magic' is unknown"),
    ({"percentile": 0}, "percentile=0"),
    ({"scheme": "uniform_symmetric", "bits": 1}, "supports bits=2..16"),
])
def test_qspec_rejects_bad_fields(kwargs, needle):
    with pytest.raises(PolicyError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        QSpec(**kwargs)


def test_error_names_the_layer():
    bad = {"layers": {"features.3": {"weight": {"bits": 99}, "act": None}}}
    with pytest.raises(PolicyError, match=r"features\.3\.weight: .*bits=99"):
        Policy.from_dict(bad)
    with pytest.raises(PolicyError, match="unknown QSpec field"):
        Policy.from_dict({"layers": {"x": {"weight": {"bitz": 4}}}})
    with pytest.raises(PolicyError, match="sparsity"):
        LayerSpec(sparsity=1.5)


def test_missing_layer_and_patterns():
    p = Policy.uniform(["conv1", "layer1.0.conv1", "fc"])
    with pytest.raises(PolicyError, match="not found among the model's quantizable layers"):
        p.check_layers(["conv1", "fc"])
    q = p.override("layer1.*", FLOAT)
    assert q["layer1.0.conv1"].is_float and not q["conv1"].is_float
    q = p.override("type:Linear", FLOAT, {"fc": "Linear", "conv1": "Conv2d",
                                          "layer1.0.conv1": "Conv2d"})
    assert q["fc"].is_float
    with pytest.raises(PolicyError, match="matches no layer"):
        p.override("nothing*", FLOAT)


def test_build_policy_errors():
    with pytest.raises(PolicyError, match="no quantizable layers"):
        build_policy([])
    with pytest.raises(PolicyError, match="first_last"):
        build_policy(["a"], first_last="sometimes")


def test_bad_files(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("layers: [1, 2\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        Policy.load(tmp_path / "bad.yaml")
    (tmp_path / "x.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(PolicyError):
        Policy.load(tmp_path / "x.yaml")
