"""Equivalent rewrites that make every weight-bearing layer a module bitsmith can quantize.

Some layers hide their weights from module swapping: ``nn.MultiheadAttention`` calls
its packed ``in_proj_weight`` and ``out_proj.weight`` functionally,
``nn.TransformerEncoderLayer`` has an inference fast path
(``torch._transformer_encoder_layer_fwd``) that bypasses its ``linear1``/``linear2``
modules under ``no_grad``, torchvision's Swin attention passes ``qkv.weight`` and
``proj.weight`` to ``F.linear``, and Hugging Face's GPT-2 uses ``Conv1D`` (a transposed
Linear). :func:`rewrite_modules` replaces each with a module of the same float function
whose projections are ordinary ``nn.Linear`` children called as modules:

==============================================  ===============================================
found                                           becomes
==============================================  ===============================================
``nn.MultiheadAttention``                       :class:`ExplicitMultiheadAttention` (``q_proj``,
                                                ``k_proj``, ``v_proj``, ``out_proj``)
``nn.TransformerEncoderLayer`` (own forward)    :class:`ExplicitTransformerEncoderLayer` (no
                                                fast path)
``nn.TransformerEncoder``                       the same, ``use_nested_tensor = False``
torchvision ``ShiftedWindowAttention`` (V2)     the same forward, ``F.linear`` on ``qkv`` /
                                                ``proj`` weights routed to the modules
``transformers.pytorch_utils.Conv1D``           ``nn.Linear`` (weight transposed)
==============================================  ===============================================

The rewritten modules derive from :class:`ExplicitModule`, which torch.fx treats as a
leaf (their forward has Python control flow on masks and shapes; the quantizable layers
inside are still swapped by name).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


class ExplicitModule:
    """Marker: a rewritten module; a leaf for torch.fx."""


# --------------------------------------------------------------------------- attention
def _additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = not allowed) as an additive float mask; float masks as given."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


class ExplicitMultiheadAttention(ExplicitModule, nn.Module):
    """``nn.MultiheadAttention`` with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``
    Linear layers called as modules (the idea of ``torch.ao.nn.quantizable.MultiheadAttention``).

    Same constructor attributes, same ``forward`` signature and results (float rounding
    aside): ``(attn_output, attn_weights or None)``, batch-first or not, unbatched inputs,
    boolean or additive ``attn_mask`` (``(L, S)`` or ``(N·heads, L, S)``) and
    ``key_padding_mask`` (``(N, S)``), ``is_causal``, ``add_bias_kv``, ``add_zero_attn``,
    attention dropout in training. Without ``need_weights`` it uses
    ``F.scaled_dot_product_attention``, as PyTorch does.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.kdim, self.vdim = mha.kdim, mha.vdim
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        self.add_zero_attn = mha.add_zero_attn
        has_bias = mha.in_proj_bias is not None
        factory = {"device": mha.out_proj.weight.device, "dtype": mha.out_proj.weight.dtype}
        self.q_proj = nn.Linear(e, e, bias=has_bias, **factory)
        self.k_proj = nn.Linear(self.kdim, e, bias=has_bias, **factory)
        self.v_proj = nn.Linear(self.vdim, e, bias=has_bias, **factory)
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, **factory)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if has_bias else (None, None, None)
            for proj, w, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.bias_k = None if mha.bias_k is None else nn.Parameter(mha.bias_k.detach().clone())
        self.bias_v = None if mha.bias_v is None else nn.Parameter(mha.bias_v.detach().clone())
        self.train(mha.training)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E): a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        causal = is_causal and key_padding_mask is None and not need_weights
        attn_mask = None if causal else _additive_mask(attn_mask, query.dtype)
        key_padding_mask = _additive_mask(key_padding_mask, query.dtype)
        n, tgt_len, _ = query.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.reshape(1, 1, -1).expand(n, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.reshape(1, 1, -1).expand(n, 1, -1)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = (None if key_padding_mask is None
                                else F.pad(key_padding_mask, (0, 1)))
        q = q.reshape(n, tgt_len, h, hd).transpose(1, 2)  # (N, H, L, hd)
        k = k.reshape(n, k.shape[1], h, hd).transpose(1, 2)  # (N, H, S, hd)
        v = v.reshape(n, v.shape[1], h, hd).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, h, 1, hd)], dim=2)
            v = torch.cat([v, v.new_zeros(n, h, 1, hd)], dim=2)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = (None if key_padding_mask is None
                                else F.pad(key_padding_mask, (0, 1)))
        src_len = k.shape[2]
        mask = None
        if attn_mask is not None:
            mask = attn_mask.reshape(-1, h, tgt_len, src_len) if attn_mask.dim() == 3 \
                else attn_mask.reshape(1, 1, tgt_len, src_len)
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(n, 1, 1, src_len)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / hd), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1)
            out = torch.matmul(F.dropout(weights, dropout) if dropout > 0 else weights, v)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt_len, self.embed_dim))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


class ExplicitTransformerEncoderLayer(ExplicitModule, nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without the inference fast path: ``linear1``,
    ``linear2`` and the attention projections always run as modules."""

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask,
                                   is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask,
                                          is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


# --------------------------------------------------------------------------- routing
class _RouteLinear(TorchFunctionMode):
    """Inside a forward: ``F.linear(x, W, b)`` with ``W`` a routed module's weight calls the
    module instead (``b`` other than the module's bias is applied as a difference)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.routes = {id(m.weight): m for m in modules}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and id(args[1]) in self.routes:
            module = self.routes[id(args[1])]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = module(args[0])
            if bias is not module.bias:  # e.g. Swin V2 zeroes the key bias
                own = 0 if module.bias is None else module.bias
                out = out + ((0 if bias is None else bias) - own)
            return out
        return func(*args, **kwargs)


class RoutedLinearsMixin(ExplicitModule):
    """Forward of the original class, with ``F.linear`` on the ``routed`` children's weights
    sent through the children (so their quantized twins run)."""

    routed: tuple[str, ...] = ()

    def forward(self, *args, **kwargs):
        with _RouteLinear([getattr(self, name) for name in self.routed]):
            return super().forward(*args, **kwargs)


_ROUTED: dict[type, type] = {}


def _routed_class(cls: type[nn.Module], routed: tuple[str, ...]) -> type[nn.Module]:
    if cls not in _ROUTED:
        _ROUTED[cls] = type(f"Routed{cls.__name__}", (RoutedLinearsMixin, cls),
                            {"routed": routed})
    return _ROUTED[cls]


# --------------------------------------------------------------------------- Conv1D
def _is_hf_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """Hugging Face ``Conv1D`` (``y = x @ W + b``, ``W`` of shape ``(in, out)``) as Linear."""
    weight: torch.Tensor = conv.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = conv.bias  # type: ignore[assignment]
    n_in, n_out = weight.shape
    lin = nn.Linear(n_in, n_out, bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.t())
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _swin_attention_types() -> tuple[type[nn.Module], ...]:
    try:
        from torchvision.models import swin_transformer as swin
    except ImportError:  # torchvision is optional
        return ()
    return tuple(getattr(swin, n) for n in ("ShiftedWindowAttention",
                                            "ShiftedWindowAttentionV2") if hasattr(swin, n))


# --------------------------------------------------------------------------- entry point
def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def rewrite_modules(model: nn.Module) -> list[tuple[str, str]]:
    """Apply the rewrites of the module docstring in place; returns ``(name, what)`` pairs."""
    done: list[tuple[str, str]] = []
    swin = _swin_attention_types()
    for name, module in list(model.named_modules()):
        if isinstance(module, ExplicitModule):
            continue
        if isinstance(module, nn.MultiheadAttention):
            _replace(model, name, ExplicitMultiheadAttention(module))
            done.append((name, "MultiheadAttention -> explicit q/k/v/out_proj Linear layers"))
        elif (isinstance(module, nn.TransformerEncoderLayer)
              and type(module).forward is nn.TransformerEncoderLayer.forward):
            module.__class__ = ExplicitTransformerEncoderLayer
            done.append((name, "TransformerEncoderLayer -> without the inference fast path"))
        elif isinstance(module, nn.TransformerEncoder) and getattr(
                module, "use_nested_tensor", False):
            module.use_nested_tensor = False
            done.append((name, "TransformerEncoder -> nested-tensor fast path off"))
        elif swin and isinstance(module, swin):
            module.__class__ = _routed_class(type(module), ("qkv", "proj"))
            done.append((name, "Swin attention -> qkv/proj called as modules"))
        elif _is_hf_conv1d(module):
            _replace(model, name, _linear_from_conv1d(module))
            done.append((name, "Conv1D -> Linear"))
    return done
