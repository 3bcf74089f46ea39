"""A quantized model's trained state beside its Policy, in a run directory.

Training-time producers (``bitsmith search``'s QAT) change the weights and learn quantizer
parameters, which a Policy alone cannot rebuild. :func:`save_result` writes
``policy.yaml``, ``weights.safetensors`` (every float weight and quantizer parameter,
format ``bitsmith.search.weights/1``) and ``result.json`` (the policy's fingerprint and the
producer's summary); :func:`load_result` rebuilds the identical quantized model from the
original float model. Consumers (``bitsmith export``) read it without importing a producer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bitsmith.atomic import atomic_path, atomic_write_text
from bitsmith.graph.convert import apply_policy, convert
from bitsmith.graph.qmodules import quantized_layers
from bitsmith.policy import Policy
from bitsmith.quantize import QuantInfo, quant_info

#: ``result.json``'s format tag.
RESULT_FORMAT = "bitsmith.search.result/1"


def save_result(qmodel: nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None
                ) -> dict[str, Path]:
    """Write ``policy.yaml``, ``weights.safetensors`` and ``result.json`` into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = quant_info(qmodel)
    policy_path = info.policy.save(out / "policy.yaml")
    tensors = {k: v.detach().cpu().contiguous() for k, v in qmodel.state_dict().items()}
    weights = out / "weights.safetensors"
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "bitsmith.search.weights/1"})
    meta = out / "result.json"
    # the fingerprint of the policy written here (``extra`` may carry the searched policy's,
    # which differs where QAT made quantizers learnable)
    atomic_write_text(meta, json.dumps({"format": RESULT_FORMAT, **(extra or {}),
                                        "policy_fingerprint": info.policy.fingerprint()},
                                       indent=2))
    return {"policy": policy_path, "weights": weights, "meta": meta}


def load_result(model: nn.Module, example_inputs: Tensor, out_dir: str | Path) -> nn.Module:
    """Rebuild the fine-tuned quantized model from :func:`save_result`'s files.

    ``model`` is the original float model (same architecture as the searched one).
    """
    from safetensors.torch import load_file

    out = Path(out_dir)
    policy = Policy.load(out / "policy.yaml")
    tensors = load_file(str(out / "weights.safetensors"))
    work, table, report = convert(model, example_inputs, fold_bn=True)
    apply_policy(work, table, policy, report)
    for name, m in quantized_layers(work).items():
        for attr in ("weight_quantizer", "input_quantizer"):
            q = getattr(m, attr)
            if q is None:
                continue
            prefix = f"{name}.{attr}.p_"
            params = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if params:
                first = next(iter(params.values()))
                q._shape_hint = tuple(first.shape)
                q._store(params)
    work.load_state_dict(tensors, strict=True)
    QuantInfo(policy, table, report).attach(work)
    return work.eval()
