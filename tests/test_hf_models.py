"""Hugging Face BERT and GPT-2 (tiny configs, random init, offline): convert, quantize
W8A8 with every projection quantized, export to integer kernels, pack and reload."""

from __future__ import annotations

import warnings

import pytest
import torch

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.export import compare_onnx, export_onnx, load_packed, save_packed
from bitsmith.models import build_model

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
W8, A8 = QSpec("uniform_symmetric", 8, "channel"), QSpec("uniform_asymmetric", 8)
TINY = {
    "hf_bert": {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 64,
                "max_position_embeddings": 32},
    "hf_gpt2": {"vocab_size": 120, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32,
                "bos_token_id": 0, "eos_token_id": 0},
}


@pytest.mark.parametrize("name, projections", [("hf_bert", 12), ("hf_gpt2", 8)])
def test_transformer_quantizes_and_exports(tmp_path, name, projections):
    model = build_model(name, **TINY[name])
    calib = [torch.randint(0, 120, (4, 16)) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF models fall back from torch.fx (eager)
        _, table, _ = bitsmith.prepare(model, calib[0])
        q = bitsmith.quantize(model, Policy.uniform(table.names, W8, A8), calibration=calib)
        report = export_onnx(q, tmp_path / f"{name}.onnx", calib[0][:1], calibration=calib)
    attention_and_mlp = [n for n in table.names if ".layer." in n or ".h." in n]
    assert len(attention_and_mlp) == projections  # q/k/v/out (c_attn/c_proj) + MLP per layer
    assert not table.warned_float_ops  # nothing silently float (embeddings, norms only)
    assert report.integer_layers == len(table) and report.float_layers == 0
    x = torch.randint(0, 120, (3, 16))
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert not torch.equal(ref, out)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.99
    agreement = compare_onnx(q, tmp_path / f"{name}.onnx", [x])
    assert agreement.top1_agreement >= 95.0
    # GPT-2's LM head is tied to the token embedding: the artifact keeps both right
    save_packed(q, tmp_path / f"{name}.safetensors", example_inputs=calib[0][:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_packed(tmp_path / f"{name}.safetensors", model=build_model(name,
                                                                               **TINY[name]))
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
