"""Latency lookup tables: keys, geometry, measurement, cache, other runtimes."""

from __future__ import annotations

import json

import pytest
import torch

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.export import LatencyTable, measure_latency_table, precision_key, register_runtime
from bitsmith.export.latency import geometry_from_model, geometry_from_table, one_layer_model
from bitsmith.export.ort import make_session

W8A8 = LayerSpec(QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8))
W4A4 = LayerSpec(QSpec("uniform_symmetric", 4, "channel"), QSpec("uniform_asymmetric", 4))
FAST = {"runs": 3, "warmup": 1}


def test_precision_keys():
    assert precision_key(None) == "fp32"
    assert precision_key(LayerSpec(None, None)) == "fp32"
    assert precision_key(W8A8) == "w8a8" and precision_key(W4A4) == "w4a4"
    assert precision_key(LayerSpec(QSpec("binary", 1), QSpec("uniform_asymmetric", 8))) == "w1a8"
    assert precision_key(LayerSpec(QSpec("mu_l2q", 4), QSpec("uniform_asymmetric", 8))) == "fp32"
    assert precision_key(LayerSpec(QSpec("uniform_symmetric", 8), None)) == "fp32"
    assert precision_key(LayerSpec(QSpec("uniform_symmetric", 12), QSpec("uniform_asymmetric",
                                                                          8))) == "fp32"


def test_geometry_from_table_matches_the_model(tiny_net, images):
    float_model, table, _ = bitsmith.prepare(tiny_net, images)
    exact = {g.name: g for g in geometry_from_model(float_model, table)}
    for g in geometry_from_table(table):
        e = exact[g.name]
        assert (g.op, g.input_shape, g.weight_shape, g.groups) == (e.op, e.input_shape,
                                                                   e.weight_shape, e.groups)
        if g.op == "Conv":
            assert g.stride == e.stride and g.padding == e.padding


@pytest.mark.parametrize("key", ["fp32", "w8a8", "w4a4"])
def test_one_layer_models_run(tiny_net, images, key):
    float_model, table, _ = bitsmith.prepare(tiny_net, images)
    for g in geometry_from_model(float_model, table):
        model, x = one_layer_model(g, key, 2)
        out = make_session(model.SerializeToString()).run(None, {"x": x})[0]
        assert out.shape[0] == 2


def test_measure_then_reuse_the_cache(tmp_path, tiny_net, images):
    cache = tmp_path / "lut.json"
    names = []
    table = measure_latency_table(tiny_net, [None, W8A8, W4A4], cache_path=cache,
                                  example_inputs=images, runtime_options=FAST,
                                  progress=names.append)
    assert names == ["conv1", "dw", "pw", "fc"]
    assert set(table.entries["pw"]) == {"fp32", "w8a8", "w4a4"}
    assert all(v > 0 for row in table.entries.values() for v in row.values())
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"], W8A8.weight, W8A8.act)
    assert table.total(policy) == pytest.approx(sum(table.latency(n, W8A8) for n in names))
    assert table.total(Policy({})) == pytest.approx(sum(table.latency(n, None) for n in names))
    again = []
    cached = measure_latency_table(tiny_net, [W8A8], cache_path=cache, example_inputs=images,
                                   runtime_options=FAST, progress=again.append)
    assert again == [] and cached.latency("pw", W8A8) == table.latency("pw", W8A8)
    loaded = LatencyTable.load(cache)
    assert loaded.entries == table.entries and loaded.meta["unit"] == "ms"
    with pytest.raises(KeyError, match="not measured"):
        cached.latency("pw", LayerSpec(QSpec("uniform_symmetric", 2), QSpec("uniform_asymmetric",
                                                                             8)))
    with pytest.raises(KeyError, match="no latency measured"):
        cached.latency("nope", W8A8)
    data = json.loads(cache.read_text())
    data["meta"]["threads"] = 99  # another fingerprint: the cache is not reused
    cache.write_text(json.dumps(data))
    remeasured = []
    measure_latency_table(tiny_net, [W8A8], cache_path=cache, example_inputs=images,
                          runtime_options=FAST, progress=remeasured.append)
    assert remeasured == names


def test_other_runtimes_plug_in_and_bad_input(tmp_path, tiny_net, images):
    class Fake:
        name = "fake"

        def fingerprint(self):
            return {"runtime": "fake"}

        def measure(self, geometry, keys, batch):
            return {k: float(len(k) * batch) for k in keys}

    register_runtime("fake", Fake)
    _, layer_table, _ = bitsmith.prepare(tiny_net, images)
    table = measure_latency_table(layer_table, [None, W8A8], runtime="fake", batch=3)
    assert table.latency("conv1", W8A8) == 12.0 and table.meta["batch"] == 3
    with pytest.raises(KeyError, match="unknown latency runtime"):
        measure_latency_table(layer_table, [W8A8], runtime="tpu")
    with pytest.raises(ValueError, match="example_inputs"):
        measure_latency_table(tiny_net, [W8A8], runtime="fake")
    with pytest.raises(TypeError):
        measure_latency_table(torch.zeros(3), [W8A8], runtime="fake")
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a bitsmith latency table"):
        LatencyTable.load(path)
