"""Packed artifact: exact reload, size = cost model, sparse masks, damaged files, bad input."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import TinyNet, randomize_bn

import bitsmith
from bitsmith import LayerSpec, Policy, QSpec
from bitsmith.cost import estimate
from bitsmith.export import (
    ArtifactError,
    ExportError,
    FrozenWeightQuantizer,
    load_packed,
    read_packed,
    save_packed,
    thaw_weights,
)
from bitsmith.graph import quantized_layers

A8 = QSpec("uniform_asymmetric", 8)


def _quantize(model, policy, images):
    return bitsmith.quantize(model, policy, calibration=images)


def _mixed_policy() -> Policy:
    return Policy({
        "conv1": LayerSpec(QSpec("uniform_symmetric", 8, "channel"), A8),
        "dw": LayerSpec(QSpec("resq", 3, "channel"), QSpec("uniform_asymmetric", 6)),
        "pw": LayerSpec(QSpec("ternary", 2, "channel"), QSpec("uniform_symmetric", 4)),
        "fc": LayerSpec(QSpec("mu_l2q", 5), QSpec("clipq", 7)),
    })


@pytest.mark.parametrize("weight", [
    QSpec("uniform_symmetric", 4, "channel", observer="mse"),
    QSpec("uniform_asymmetric", 3, "channel"), QSpec("binary", 1, "channel"),
    QSpec("zoomq", 2), QSpec("pot", 5, "channel"), QSpec("fixed_point", 6),
    QSpec("clipq", 2, "channel", reduced_range=True),
])
def test_round_trip_is_bit_identical_for_every_scheme(tmp_path, tiny_net, images, weight):
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"], weight, A8)
    q = _quantize(tiny_net, policy, images)
    report = save_packed(q, tmp_path / "m.safetensors")
    loaded = load_packed(tmp_path / "m.safetensors", model=TinyNet())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
    assert report.matches_cost_model and report.differences == []
    assert loaded.bitsmith.policy == policy


def test_mixed_policy_size_equals_cost_model_and_params_survive(tmp_path, tiny_net, images):
    q = _quantize(tiny_net, _mixed_policy(), images)
    report = save_packed(q, tmp_path / "m.safetensors", example_inputs=images[:1])
    cost = estimate(q.bitsmith.layer_table, q.bitsmith.policy)
    assert report.tensor_bytes == cost.size_bytes == report.predicted_bytes
    assert report.file_bytes == report.tensor_bytes + report.header_bytes
    assert report.header_bytes < 2_500  # metadata: a few hundred bytes of JSON
    without = save_packed(q, tmp_path / "t.safetensors")  # LayerTable stored instead
    assert without.tensor_bytes == report.tensor_bytes
    assert report.header_bytes < without.header_bytes < report.header_bytes + 4_000
    loaded = load_packed(tmp_path / "m.safetensors", model=randomize_bn(TinyNet()))
    with torch.no_grad():
        x = torch.randn(3, 3, 16, 16)
        assert torch.equal(q(x), loaded(x))
        assert torch.equal(q(x), load_packed(tmp_path / "t.safetensors", model=TinyNet())(x))
    assert [(l.name, l.macs) for l in loaded.bitsmith.layer_table] == [
        (l.name, l.macs) for l in q.bitsmith.layer_table]
    assert estimate(loaded.bitsmith.layer_table, loaded.bitsmith.policy) == cost
    for name, layer in quantized_layers(loaded).items():
        assert isinstance(layer.weight_quantizer, FrozenWeightQuantizer)
        orig = quantized_layers(q)[name].input_quantizer.params()
        for key, value in layer.input_quantizer.params().items():
            assert torch.equal(value, orig[key].reshape(value.shape)), (name, key)


def test_built_in_model_loads_without_a_model(tmp_path, images):
    from bitsmith.models import build_model

    net = randomize_bn(build_model("small_cnn", in_channels=3, width=8))
    policy = Policy.uniform(["conv1", "conv2", "conv3", "fc"],
                            QSpec("uniform_symmetric", 3, "channel"), A8)
    q = _quantize(net, policy, images)
    save_packed(q, tmp_path / "s.safetensors", model_name="small_cnn", example_inputs=images,
                model_kwargs={"in_channels": 3, "width": 8})
    loaded = load_packed(tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(q(images), loaded(images))


def test_sparse_layer_stores_survivors_and_a_mask(tmp_path, tiny_net, images):
    with torch.no_grad():
        w = tiny_net.pw.weight
        w[torch.rand_like(w) < 0.9] = 0.0  # 90% pruned
    policy = Policy.uniform(["conv1", "dw", "pw", "fc"],
                            QSpec("uniform_symmetric", 4, "channel"), A8
                            ).with_layers({"pw": LayerSpec(QSpec("uniform_symmetric", 4,
                                                                 "channel"), A8, 0.9)})
    q = _quantize(tiny_net, policy, images)
    report = save_packed(q, tmp_path / "p.safetensors")
    entry = report.layers["pw"]["weight"]
    assert entry["survivors"] == int((q.pw.weight != 0).sum()) < q.pw.weight.numel() // 5
    blobs, meta = read_packed(tmp_path / "p.safetensors")
    sparse = meta["sparse"]["pw"]
    assert sparse["survivors"] == entry["survivors"] and sparse["mask"] in ("bitmask", "index")
    dense_codes = sum(-(-m.weight.numel() * 4 // 8) for n, m in quantized_layers(q).items()
                      if n != "pw")
    assert blobs["codes"].size == dense_codes + -(-entry["survivors"] * 4 // 8)
    assert blobs["masks"].size == sparse["bytes"]
    loaded = load_packed(tmp_path / "p.safetensors", model=TinyNet())
    with torch.no_grad():
        assert torch.equal(q(images), loaded(images))
    # any byte the file saves against the cost model's bitmask is explained
    assert report.matches_cost_model or any("pw.weight" in d for d in report.differences)


def test_sparse_layer_with_a_scheme_without_zero_level_is_refused(tmp_path, tiny_net, images):
    with torch.no_grad():
        tiny_net.pw.weight[:, :4] = 0.0
    policy = Policy({"pw": LayerSpec(QSpec("binary", 1, "channel"), A8, 0.25)})
    q = _quantize(tiny_net, policy, images)
    with pytest.raises(ExportError, match="pw: binary codes do not reproduce.*zero level"):
        save_packed(q, tmp_path / "b.safetensors")


def test_unquantized_model_and_unstorable_policies_are_refused(tmp_path, tiny_net, images):
    with pytest.raises(ExportError, match="not quantized"):
        save_packed(tiny_net, tmp_path / "f.safetensors")
    policy = Policy({"conv1": LayerSpec(QSpec("uniform_asymmetric", 12), A8)})
    q = _quantize(tiny_net, policy, images)
    with pytest.raises(ExportError, match="conv1.weight: uniform_asymmetric at 12 bits"):
        save_packed(q, tmp_path / "z.safetensors")
    uncal = bitsmith.quantize(tiny_net, Policy({"fc": LayerSpec(QSpec(), A8)}),
                              example_inputs=images)
    with pytest.raises(ExportError, match="fc: the input quantizer is not calibrated"):
        save_packed(uncal, tmp_path / "u.safetensors")


@pytest.fixture
def artifact(tmp_path, tiny_net, images):
    q = _quantize(tiny_net, _mixed_policy(), images)
    path = tmp_path / "a.safetensors"
    save_packed(q, path)
    return path


def test_truncated_artifact_fails_cleanly(artifact):
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) - 100])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        load_packed(artifact, model=TinyNet())
    artifact.write_bytes(data[:5])
    with pytest.raises(ArtifactError):
        load_packed(artifact, model=TinyNet())


def test_tampered_weights_or_metadata_fail_the_checksum(artifact):
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF  # a payload byte
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_packed(artifact, model=TinyNet())
    data[-10] ^= 0xFF
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    header = json.loads(bytes(data[8:8 + n]))
    meta = json.loads(header["__metadata__"]["bitsmith"])
    meta["policy"]["specs"][meta["policy"]["layers"]["fc"]]["weight"]["bits"] = 4
    header["__metadata__"]["bitsmith"] = json.dumps(meta, separators=(",", ":"))
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (-len(new) % 8)
    artifact.write_bytes(struct.pack("<Q", len(new)) + new + bytes(data[8 + n:]))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_packed(artifact, model=TinyNet())


def test_missing_foreign_and_mismatched_files(tmp_path, artifact):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_packed(tmp_path / "nope.safetensors")
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ArtifactError, match="not a bitsmith packed artifact"):
        load_packed(tmp_path / "other.safetensors")
    with pytest.raises(ArtifactError, match="user model"):
        load_packed(artifact)

    class Wider(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 12)

    with pytest.raises(ArtifactError, match="does not match"):
        load_packed(artifact, model=Wider())


def test_model_that_cannot_run_the_stored_shapes(tmp_path, tiny_net, images):
    q = _quantize(tiny_net, _mixed_policy(), images)
    save_packed(q, tmp_path / "m.safetensors", example_inputs=images[:1])
    with pytest.raises(ArtifactError, match="cannot run the artifact's input shapes"):
        load_packed(tmp_path / "m.safetensors", model=torch.nn.Conv2d(1, 1, 3))

    class Other(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 10, bias=False)

    with pytest.raises(ArtifactError, match="does not match"):
        load_packed(tmp_path / "m.safetensors", model=Other())


def test_thaw_weights_restores_fake_quantization(artifact):
    loaded = load_packed(artifact, model=TinyNet())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = loaded(x)
        thaw_weights(loaded)
        assert not any(isinstance(m.weight_quantizer, FrozenWeightQuantizer)
                       for m in quantized_layers(loaded).values())
        after = loaded(x)
    assert torch.isfinite(after).all() and (after - before).abs().max() < 0.5 * before.abs().max()


def test_resnet20_mixed_2_to_8_bits_is_8x_smaller_than_fp32_state_dict(tmp_path):
    from bitsmith.export.pipeline import state_dict_bytes
    from bitsmith.models import build_model

    net = randomize_bn(build_model("resnet20"))
    calib = torch.randn(8, 3, 32, 32)
    _, table, _ = bitsmith.prepare(net, calib[:1])
    bits = [8, 4, 3, 5, 2, 6, 4, 3, 5, 4, 3, 4, 5, 2, 4, 3, 6, 4, 3, 8]  # as the benchmark
    policy = Policy({n: LayerSpec(QSpec("uniform_symmetric", b, "channel"), A8)
                     for n, b in zip(table.names, bits)})
    q = _quantize(net, policy, calib)
    report = save_packed(q, tmp_path / "r20.safetensors", example_inputs=calib[:1],
                         model_name="resnet20")
    assert 3.8 <= report.avg_weight_bits <= 4.0
    assert report.tensor_bytes == estimate(table, policy).size_bytes
    assert state_dict_bytes(net) >= 8 * report.file_bytes
    loaded = load_packed(tmp_path / "r20.safetensors")
    with torch.no_grad():
        assert torch.equal(q(calib), loaded(calib))
