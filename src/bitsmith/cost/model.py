"""Analytic cost model: size in bytes, BitOPs, activation memory, compression ratio.

All numbers are for one deployed model as bitsmith exports it:

* **weights** of a quantized layer: ``ceil(n_w · bits / 8)`` bytes, bit-packed;
  for a sparse layer only the ``n_nz`` surviving weights are stored, plus the
  mask that locates them. Given the actual masks (``estimate(..., masks=...)``,
  :class:`bitsmith.cost.sparse.MaskLayout` per layer) the mask is the cheaper of
  a bitmask and a relative index, exactly as the packed artifact stores it
  (:func:`bitsmith.cost.sparse.mask_layout`, shared with the export); from the
  Policy's ``sparsity`` alone (positions unknown) it is the bitmask,
  ``ceil(n_w / 8)`` bytes, an upper bound;
* **overhead** of each quantizer: per group (1 for per-tensor, C_out for
  per-channel) ``4 · float_params`` bytes of float32 scales/thresholds and
  ``zero_point_bytes`` of integer zero points; activation quantizers likewise;
* **float** tensors at 4 bytes each: biases (int32 on integer runtimes, also 4
  bytes), weights of layers the policy keeps in float, and every parameter that
  belongs to no quantizable layer (LayerNorm, embeddings, ...).

``fp32_bytes`` is the same model with every parameter in float32 (after BN
folding, so that removing BN does not count as compression).
BitOPs are ``Σ MACs · b_w · b_a`` per example, with float tensors at 32 bits.
Activation memory is the input feature map of each layer at its activation
precision; the peak is the largest of them (one example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bitsmith.cost.sparse import MaskLayout
from bitsmith.graph.layer_table import LayerInfo, LayerTable
from bitsmith.policy import LayerSpec, Policy, QSpec, block_size
from bitsmith.schemes import get_scheme

FLOAT_BITS = 32


def float_params_of(spec: QSpec) -> int:
    """float32 scalars stored per quantization group for ``spec``'s scheme."""
    return get_scheme(spec.scheme).float_params_for(spec.bits)


def quantizer_overhead_bytes(spec: QSpec | None, channels: int, inputs: int = 1) -> int:
    """Bytes of scales / zero points / thresholds of one quantizer.

    ``channels``: output channels (weights) or channels (activations); ``inputs``: input
    weights per output channel (block-wise weights have ``ceil(inputs / N)`` groups each).
    """
    if spec is None:
        return 0
    block = block_size(spec.granularity)
    groups = (channels * math.ceil(inputs / block) if block is not None
              else channels if spec.granularity == "channel" else 1)
    scheme = get_scheme(spec.scheme)
    return groups * (4 * float_params_of(spec) + scheme.zero_point_bytes)


def weight_bytes(n_weights: int, bits: float, sparsity: float = 0.0,
                 mask: MaskLayout | None = None) -> int:
    """Packed bytes of ``n_weights`` at ``bits`` each; sparse layers add their mask.

    With ``mask`` (the layer's actual survivors): ``ceil(m · bits / 8) + mask.nbytes``
    (``m = mask.survivors``), the packed artifact's bytes. Without it, ``sparsity`` gives
    ``m = n - round(n · sparsity)`` and the mask is charged as a bitmask.
    """
    if mask is not None:
        if mask.total != n_weights:
            raise ValueError(f"mask covers {mask.total} weights, the layer has {n_weights}")
        return math.ceil(mask.survivors * bits / 8) + mask.nbytes
    if sparsity <= 0.0:
        return math.ceil(n_weights * bits / 8)
    survivors = n_weights - int(round(n_weights * sparsity))
    return math.ceil(survivors * bits / 8) + math.ceil(n_weights / 8)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer (bytes, BitOPs per example)."""

    name: str
    weight_bits: int
    act_bits: int
    weight_bytes: int
    overhead_bytes: int
    bias_bytes: int
    bitops: int
    activation_bytes: float

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.overhead_bytes + self.bias_bytes


@dataclass(frozen=True)
class CostReport:
    """Whole-model cost of a Policy; sizes in bytes, BitOPs per example."""

    size_bytes: int
    fp32_bytes: int
    weight_bytes: int
    overhead_bytes: int
    float_bytes: int
    bitops: int
    fp32_bitops: int
    peak_activation_bytes: float
    avg_weight_bits: float
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """FP32 bytes / quantized bytes."""
        return self.fp32_bytes / max(self.size_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compression"] = self.compression
        return out


def layer_cost(info: LayerInfo, spec: LayerSpec | None, mask: MaskLayout | None = None
               ) -> LayerCost:
    """Cost of one layer under ``spec`` (``None`` = float).

    ``mask``: the layer's actual survivor layout, used when ``spec.sparsity > 0`` (the
    packed export stores a mask only for those layers).
    """
    wspec = None if spec is None else spec.weight
    aspec = None if spec is None else spec.act
    wbits = FLOAT_BITS if wspec is None else wspec.bits
    abits = FLOAT_BITS if aspec is None else aspec.bits
    sparsity = 0.0 if spec is None else spec.sparsity
    if sparsity <= 0.0 or wspec is None:
        mask = None
    in_channels = info.in_channels if info.type != "Linear" else info.input_shape[-1]
    return LayerCost(
        name=info.name, weight_bits=wbits, act_bits=abits,
        weight_bytes=weight_bytes(info.weight_params, wbits, sparsity, mask),
        overhead_bytes=(quantizer_overhead_bytes(wspec, info.out_channels,
                                                 info.weight_params // max(info.out_channels, 1))
                        + quantizer_overhead_bytes(aspec, in_channels)),
        bias_bytes=4 * info.bias_params,
        bitops=info.macs * wbits * abits,
        activation_bytes=info.activation_elems * abits / 8,
    )


def estimate(table: LayerTable, policy: Policy,
             masks: Mapping[str, MaskLayout] | None = None) -> CostReport:
    """Cost of deploying the model described by ``table`` under ``policy``.

    ``masks``: ``layer -> MaskLayout`` of the actual survivors of sparse layers (see
    :func:`bitsmith.cost.sparse.mask_layout`); sparse layers without one are charged a
    bitmask and ``round(n · sparsity)`` pruned weights.
    """
    policy.check_layers(table.names)
    masks = masks or {}
    layers = [layer_cost(info, policy.get(info.name), masks.get(info.name)) for info in table]
    in_layers = sum(info.weight_params + info.bias_params for info in table)
    other_bytes = 4 * (table.total_params - in_layers)
    wbytes = sum(c.weight_bytes for c in layers)
    overhead = sum(c.overhead_bytes for c in layers)
    float_bytes = other_bytes + sum(c.bias_bytes for c in layers)
    n_w = sum(info.weight_params for info in table)
    avg_bits = sum(c.weight_bits * i.weight_params for c, i in zip(layers, table)) / max(n_w, 1)
    return CostReport(
        size_bytes=wbytes + overhead + float_bytes,
        fp32_bytes=4 * table.total_params,
        weight_bytes=wbytes, overhead_bytes=overhead, float_bytes=float_bytes,
        bitops=sum(c.bitops for c in layers),
        fp32_bitops=table.total_macs * FLOAT_BITS * FLOAT_BITS,
        peak_activation_bytes=max((c.activation_bytes for c in layers), default=0.0),
        avg_weight_bits=avg_bits, layers=layers,
    )
