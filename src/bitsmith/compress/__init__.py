"""Pruning and DPQ: mixed precision for pruned networks, with honest compression accounting.

See ``docs/compress.md``. The producer contract: :func:`compress` with
:class:`CompressConfig`; the flow itself: :func:`compress_model`; building blocks:
:mod:`~bitsmith.compress.pruning` (magnitude / channel masks, cubic schedule),
:mod:`~bitsmith.compress.dpq` (pseudo-mean, two-level scales), :mod:`~bitsmith.compress.bits`
(dynamic bit widths under a budget), :mod:`~bitsmith.compress.rpc` (partial activation
quantization), :mod:`~bitsmith.compress.accounting` (size = packed artifact payload) and
:mod:`~bitsmith.compress.callbacks` (all of it inside the shared training loop).
"""

from bitsmith.compress.accounting import compression_report, mask_layouts, sync_sparsity
from bitsmith.compress.bits import BitChoice, allocate_bits
from bitsmith.compress.dpq import DPQWeightQuantizer, dpq_scale, install_dpq, set_layer_spec
from bitsmith.compress.pipeline import CompressConfig, CompressResult, compress, compress_model
from bitsmith.compress.pruning import (
    CompressError,
    CubicSchedule,
    apply_masks,
    check_sparsity,
    magnitude_masks,
    mask_gradients,
)
from bitsmith.compress.rpc import RPC, RPCSchedule

__all__ = [
    "BitChoice", "CompressConfig", "CompressError", "CompressResult", "CubicSchedule",
    "DPQWeightQuantizer", "RPC", "RPCSchedule", "allocate_bits", "apply_masks",
    "check_sparsity", "compress", "compress_model", "compression_report", "dpq_scale",
    "install_dpq", "magnitude_masks", "mask_gradients", "mask_layouts", "set_layer_spec",
    "sync_sparsity",
]
