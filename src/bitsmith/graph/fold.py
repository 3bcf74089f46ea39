"""Batch-norm folding on a torch.fx graph.

For a ``Conv``/``ConvTranspose``/``Linear`` node whose *only* user is an
eval-mode ``BatchNorm`` node, the BN is folded into the layer:

    w' = w · γ / sqrt(σ² + ε)        (per output channel)
    b' = (b − μ) · γ / sqrt(σ² + ε) + β

and the BN node is removed. Post-training quantization then sees the weights
that actually run on an integer runtime (which has no separate BN).
"""

from __future__ import annotations

import torch
from torch import fx, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.Linear)


Foldable = (nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d
            | nn.Linear)


@torch.no_grad()
def fold_bn_into(layer: Foldable, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``layer``'s weight and bias, in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std  # (C_out,)
    w = layer.weight
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        groups = layer.groups
        w_view = w.view(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        w_view.mul_(factor.view(groups, 1, -1, *([1] * (w.dim() - 2))))
    else:
        w.mul_(factor.view(-1, *([1] * (w.dim() - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _get(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def fold_batchnorm(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Fold every foldable (layer → BN) pair in ``gm`` in place; returns the folded name pairs."""
    folded: list[tuple[str, str]] = []
    users_of_layer: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            users_of_layer[str(node.target)] = users_of_layer.get(str(node.target), 0) + 1
    for node in list(gm.graph.nodes):
        bn = _get(gm, node)
        if not isinstance(bn, _BN) or bn.training or not bn.track_running_stats:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or len(src.users) != 1:
            continue
        layer = _get(gm, src)
        # A module called at several places shares its weight: folding would change the others.
        if not isinstance(layer, _FOLDABLE) or users_of_layer.get(str(src.target), 0) != 1:
            continue
        if users_of_layer.get(str(node.target), 0) != 1:
            continue
        out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if out_channels != bn.num_features:
            continue
        fold_bn_into(layer, bn)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        _replace_with_identity(gm, node.target)
        folded.append((str(src.target), str(node.target)))
    gm.graph.lint()
    gm.recompile()
    return folded


def _replace_with_identity(gm: fx.GraphModule, target: str) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, nn.Identity())
