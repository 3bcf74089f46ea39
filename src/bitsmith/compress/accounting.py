"""Honest compression accounting of a pruned + quantized model.

The size of a compressed model is what the packed artifact (``bitsmith.export.save_packed``)
stores, byte for byte (its payload; the safetensors header with the JSON metadata comes on
top and is reported separately)::

    size = Σ_sparse layers [ceil(m_l · b_l / 8) + mask_l]        surviving codes + positions
         + Σ_dense quantized layers ceil(n_l · b_l / 8)
         + Σ quantizers groups · (4 · float params + zero-point bytes)   scales (float32)
         + 4 · (biases + every float parameter)                  folded biases, float layers
    mask_l = min(ceil(n_l / 8), relative index bytes)            (cost.sparse.mask_layout)
    compression = FP32 bytes / size,   FP32 bytes = 4 · parameters of the BN-folded model

``m_l`` are the nonzero weights of a layer the Policy marks sparse. This module only
gathers the actual masks and calls :func:`bitsmith.cost.estimate`; the formula itself
lives in ``bitsmith.cost`` (shared with the export).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from bitsmith.cost import CostReport, MaskLayout, estimate, mask_layout, weight_bytes
from bitsmith.cost.sparse import survivors_of
from bitsmith.graph import LayerTable, layer_weight, quantized_layers
from bitsmith.policy import Policy
from bitsmith.quantize import quant_info


def mask_layouts(qmodel: nn.Module) -> dict[str, MaskLayout]:
    """``layer -> MaskLayout`` of the layers whose LayerSpec has ``sparsity > 0``.

    Survivors are the nonzero entries of the (float, masked) weight, as the export stores.
    """
    out: dict[str, MaskLayout] = {}
    for name, layer in quantized_layers(qmodel).items():
        if layer.weight_quantizer is not None and layer.layer_spec.sparsity > 0:
            out[name] = mask_layout(survivors_of(layer.weight))
    return out


def sync_sparsity(qmodel: nn.Module) -> Policy:
    """Write each layer's storage choice (sparse or dense) into its LayerSpec / the Policy.

    A layer with zero weights is marked sparse (``sparsity`` = its zero fraction, so that the
    export stores survivors + mask) only when that is smaller than storing it dense:
    ``ceil(m·b/8) + mask < ceil(n·b/8)``; otherwise its zeros are stored as zero codes
    (sparsity 0). Returns the updated Policy (also at ``qmodel.bitsmith.policy``).
    """
    info = quant_info(qmodel)
    updates = {}
    for name, layer in quantized_layers(qmodel).items():
        wspec = layer.layer_spec.weight
        if wspec is None:
            continue
        n = layer.weight.numel()
        keep = survivors_of(layer.weight)
        frac = 0.0
        if keep.sum() < n:
            sparse = weight_bytes(n, wspec.bits, mask=mask_layout(keep))
            if sparse < weight_bytes(n, wspec.bits):
                frac = min((n - int(keep.sum())) / n, (n - 1) / n)
        if frac != layer.layer_spec.sparsity:
            spec = replace(layer.layer_spec, sparsity=frac)
            layer.layer_spec = spec
            updates[name] = spec
    if updates:
        info.policy = info.policy.with_layers(updates)
    return info.policy


def compression_report(qmodel: nn.Module) -> CostReport:
    """Cost model of ``qmodel`` (from :func:`bitsmith.quantize`) with its actual masks.

    ``.size_bytes`` equals the packed artifact's payload (``PackedReport.tensor_bytes``);
    ``.compression`` is FP32 bytes / that.
    """
    info = quant_info(qmodel)
    return estimate(info.layer_table, info.policy, mask_layouts(qmodel))


def sparse_float_bytes(model: nn.Module, table: LayerTable, pruned: list[str]) -> int:
    """Bytes of a pruned but *unquantized* model (the "pruning alone" baseline).

    Each pruned layer stores its surviving weights as float32 plus the cheaper mask
    (:func:`bitsmith.cost.weight_bytes` with the layer's :class:`MaskLayout`, the rule of the
    packed format); every other parameter is float32. The packed format has no float-sparse
    mode, so this is the size such a format would have, computed with the same functions.

    Args:
        model: the BN-folded float model (e.g. from :func:`bitsmith.prepare`), weights masked.
        table: its LayerTable.
        pruned: names of the pruned layers.
    """
    total = 4 * table.total_params
    for name in pruned:
        info = table[name]
        weight = layer_weight(model, name)
        total += weight_bytes(info.weight_params, 32, mask=mask_layout(survivors_of(weight)))
        total -= 4 * info.weight_params
    return total
