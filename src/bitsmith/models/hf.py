"""Hugging Face ``transformers`` models (optional: ``pip install bitsmith[hf]``).

:class:`HFLogits` wraps any ``transformers`` model as bitsmith wants a model: token ids in
(``(batch, seq)``, int64), logits out (a tensor). It passes an all-ones attention mask when
none is given (without one, recent ``transformers`` versions build packed-sequence masks
with ``torch.diff`` and a boolean ``cumsum`` that the ONNX exporter cannot express).

:func:`hf_bert` and :func:`hf_gpt2` build BERT (sequence classification) and GPT-2 (causal
language model) **from their configs, randomly initialised, offline** (nothing is
downloaded); the defaults are the published base sizes (BERT-base: 12 layers, 768 hidden,
12 heads; GPT-2 small: 12 layers, 768 hidden, 12 heads, 50,257 tokens), any config field
can be overridden (``hf_gpt2(n_layer=2, n_embd=64)``). Registered as ``hf_bert`` and
``hf_gpt2`` in :func:`bitsmith.models.build_model`.

GPT-2's ``Conv1D`` projections become ``nn.Linear`` in conversion
(:mod:`bitsmith.graph.rewrite`), so all attention and MLP projections are quantized.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("Hugging Face models need the optional dependency: "
                          "pip install 'bitsmith[hf]'") from None
    return transformers


class HFLogits(nn.Module):
    """``forward(input_ids, attention_mask=None) -> logits`` for a ``transformers`` model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def hf_bert(num_labels: int = 2, seed: int | None = 0, **config: Any) -> HFLogits:
    """BERT (``BertForSequenceClassification``) from a config; base size by default."""
    tf = _transformers()
    if seed is not None:
        torch.manual_seed(seed)
    cfg = tf.BertConfig(num_labels=num_labels, **config)
    return HFLogits(tf.BertForSequenceClassification(cfg)).eval()


def hf_gpt2(seed: int | None = 0, **config: Any) -> HFLogits:
    """GPT-2 (``GPT2LMHeadModel``, tied embedding) from a config; GPT-2 small by default."""
    tf = _transformers()
    if seed is not None:
        torch.manual_seed(seed)
    cfg = tf.GPT2Config(use_cache=False, **config)
    return HFLogits(tf.GPT2LMHeadModel(cfg)).eval()
