"""The packed artifact: bit-packed weights in safetensors plus JSON metadata, and its exact loader.

Logical content, per quantized layer ``L`` (see ``docs/export.md``):

* ``L.weight.codes``: the weight's integer codes (``Scheme.encode``) bit-packed at the
  policy's bit width, ``ceil(n·bits/8)`` bytes (only the survivors of a sparse layer);
* ``L.weight.<param>`` (float32, one per group): the scheme's stored parameters
  (``Scheme.stored_params``); ``L.weight.zero_point`` (1 byte per group) where the scheme
  has an integer zero point;
* ``L.weight.mask`` for a layer the Policy marks sparse: the surviving positions, as a
  bitmask or a relative index, whichever is smaller;
* ``L.input.<param>`` / ``L.input.zero_point``: the calibrated input-activation quantizer
  (range-based schemes; data-driven ones need nothing stored);

plus every other tensor of the BN-folded model's ``state_dict`` (biases, float layers,
normalisation parameters). They are concatenated into a few blobs
(:mod:`bitsmith.export.layout`), so the payload is exactly the cost model's byte count.
The metadata (the safetensors header's ``__metadata__``, JSON) holds the Policy (each
distinct LayerSpec once), the example input shapes (to rebuild the LayerTable), how the
model was converted, which model to build, versions, sparse-mask sizes, a signature of
the parameter names and shapes, and a SHA-256 over blobs and metadata.
:func:`load_packed` rebuilds the quantized model; its outputs equal the simulated
model's bit for bit.

The SHA-256 detects damage (truncation, flipped bits), **not tampering**: it is stored in
the file, so whoever changes the file can recompute it. With ``key=`` :func:`save_packed`
adds an HMAC-SHA256 of the same content (header field ``hmac_sha256``), and
``load_packed(..., key=)`` refuses a file whose signature is missing or does not match.
"""

from __future__ import annotations

import copy
import hmac
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bitsmith.atomic import atomic_path
from bitsmith.cost import MaskLayout, estimate
from bitsmith.export.bitpack import decode_mask, encode_mask, pack_bits, unpack_bits
from bitsmith.export.errors import ArtifactError, ExportError
from bitsmith.export.frozen import freeze
from bitsmith.export.layout import (
    QUANTIZER_KEYS,
    from_blobs,
    layout,
    quantized_weight_keys,
    to_blobs,
)
from bitsmith.export.metadata import (
    as_key,
    compact_policy,
    compact_table,
    digest,
    policy_from,
    signature,
    state_signature,
    table_from,
    versions,
)
from bitsmith.graph import (
    ConversionReport,
    ConversionWarning,
    LayerInfo,
    LayerTable,
    apply_policy,
    convert,
    quantized_layers,
)
from bitsmith.graph.fold import fold_batchnorm
from bitsmith.graph.qmodules import QuantizedLayer
from bitsmith.graph.rewrite import rewrite_modules
from bitsmith.graph.trace import try_trace
from bitsmith.policy import Policy, PolicyError, QSpec
from bitsmith.schemes.base import Params, Scheme, get_scheme
from bitsmith.schemes.blocks import block_count, from_blocks, to_blocks

FORMAT = "bitsmith.packed/1"
SIGNATURE_KEY = "hmac_sha256"


@dataclass
class PackedReport:
    """What :func:`save_packed` wrote, in bytes, next to the cost model's prediction.

    ``tensor_bytes`` is the payload; ``header_bytes`` the safetensors header
    with the metadata; ``predicted_bytes`` the cost model's ``size_bytes``.
    ``differences`` explains every byte by which payload and prediction differ.
    """

    path: str
    file_bytes: int
    tensor_bytes: int
    header_bytes: int
    predicted_bytes: int
    fp32_bytes: int
    avg_weight_bits: float
    differences: list[str] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def matches_cost_model(self) -> bool:
        return self.tensor_bytes == self.predicted_bytes

    @property
    def compression(self) -> float:
        """FP32 bytes (BN-folded parameters) / file bytes."""
        return self.fp32_bytes / max(self.file_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["matches_cost_model"] = self.matches_cost_model
        out["compression"] = self.compression
        return out


# --------------------------------------------------------------------------- helpers
def _quant_info(qmodel: nn.Module):
    info = getattr(qmodel, "bitsmith", None)
    if info is None or not quantized_layers(qmodel):
        raise ExportError(
            "the model is not quantized: pass the result of bitsmith.quantize(model, policy, ...)"
            " (a model with at least one quantized layer)")
    return info


def _flat_param(value: torch.Tensor) -> np.ndarray:
    return value.detach().to(torch.float32).reshape(-1).cpu().numpy()


def _param_shape(weight_shape: tuple[int, ...], axis: int | None,
                 block: int | None = None) -> tuple[int, ...]:
    if block is not None:  # one row per (output channel, block): see schemes.blocks
        return (block_count(weight_shape, block), 1)
    shape = [1] * len(weight_shape)
    if axis is not None:
        shape[axis % len(shape)] = weight_shape[axis]
    return tuple(shape)


def _check_storable(where: str, spec: QSpec) -> Scheme:
    scheme = get_scheme(spec.scheme)
    if scheme.zero_point_bytes and spec.bits > 8:
        raise ExportError(f"{where}: {spec.scheme} at {spec.bits} bits needs a zero point wider "
                          "than the format's 1 byte; use at most 8 bits")
    return scheme


def _store_params(tensors: dict[str, np.ndarray], prefix: str, scheme: Scheme, params: Params,
                  bits: int) -> None:
    for key in scheme.stored_params(bits):
        tensors[f"{prefix}.{key}"] = _flat_param(params[key])
    if scheme.zero_point_bytes:
        zp = torch.round(params["zero_point"].detach()).reshape(-1).cpu().numpy()
        tensors[f"{prefix}.zero_point"] = zp.astype(np.uint8)


def _restore_params(tensors: dict[str, np.ndarray], prefix: str, scheme: Scheme, spec: QSpec,
                    shape: tuple[int, ...]) -> Params:
    """Full parameters (range-based helpers such as ``qmax`` re-derived from the QSpec)."""
    params: Params = {}
    if scheme.range_based:
        ones = torch.ones(shape)
        params = dict(scheme.params_from_range(-ones, ones, spec.bits, spec))
    for key in scheme.stored_params(spec.bits):
        params[key] = torch.from_numpy(tensors[f"{prefix}.{key}"].copy()).reshape(shape)
    if scheme.zero_point_bytes:
        zp = tensors[f"{prefix}.zero_point"].astype(np.float32)
        params["zero_point"] = torch.from_numpy(zp).reshape(shape)
    return params


# --------------------------------------------------------------------------- save
def _pack_weight(name: str, layer: QuantizedLayer,
                 tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Encode one layer's weight; verify that decoding reproduces the simulation exactly."""
    quantizer, spec = layer.weight_quantizer, layer.layer_spec.weight
    if quantizer is None or spec is None:
        raise ExportError(f"{name}: the weight is not quantized (nothing to pack)")
    scheme = _check_storable(f"{name}.weight", spec)
    bits = spec.bits
    w = layer.weight.detach()
    w_hat = layer.quantized_weight().detach()  # also fits range-based parameters
    params = (quantizer.params() if scheme.range_based
              else scheme.params_from_data(w, bits, quantizer.axis))
    block = quantizer.block_size
    codes = (scheme.encode(w, params, bits) if block is None
             else from_blocks(scheme.encode(to_blocks(w, block), params, bits), tuple(w.shape)))
    entry: dict[str, Any] = {"count": w.numel()}
    keep = None
    if layer.layer_spec.sparsity > 0:
        keep = (w != 0).reshape(-1).cpu().numpy()
        kind, k, mask = encode_mask(keep)
        tensors[f"{name}.weight.mask"] = mask
        entry.update(mask=kind, index_bits=k, survivors=int(keep.sum()))
    decoded = _decode_weight(scheme, codes, keep, params, bits, block)
    if not torch.equal(decoded, w_hat.to(torch.float32)):
        raise ExportError(
            f"{name}: {spec.scheme} codes do not reproduce the simulated weight exactly"
            + (" (the scheme maps pruned zeros to nonzero values; a sparse layer needs a "
               "scheme with a zero level)" if keep is not None else ""))
    flat = codes.reshape(-1).cpu().numpy()
    tensors[f"{name}.weight.codes"] = pack_bits(flat if keep is None else flat[keep], bits)
    _store_params(tensors, f"{name}.weight", scheme, params, bits)
    return entry


def _decode_weight(scheme: Scheme, codes: torch.Tensor, keep: np.ndarray | None,
                   params: Params, bits: int, block: int | None = None) -> torch.Tensor:
    values = (scheme.decode(codes, params, bits) if block is None else from_blocks(
        scheme.decode(to_blocks(codes, block), params, bits), tuple(codes.shape)))
    if keep is not None:
        values = values.reshape(-1).clone()
        values[torch.from_numpy(~keep)] = 0.0
        values = values.reshape(codes.shape)
    return values


def save_packed(qmodel: nn.Module, path: str | Path, *, example_inputs: Any = None,
                model_name: str | None = None, model_kwargs: dict[str, Any] | None = None,
                key: bytes | str | None = None) -> PackedReport:
    """Write ``qmodel`` (from :func:`bitsmith.quantize`) as a packed artifact.

    Args:
        qmodel: a quantized model; every range-based activation quantizer must be calibrated.
        path: output file (``.safetensors`` by convention).
        example_inputs: an example batch (tensor or tuple); only its shapes and dtypes are
            stored, so that the loader rebuilds the LayerTable by running the model once on
            zeros of those dtypes (int64 zeros for token ids).
            Without it the LayerTable itself goes into the metadata (a few KB more).
        model_name: the ``bitsmith.models.build_model`` name of the architecture (with
            ``model_kwargs``), so that :func:`load_packed` can rebuild it without a model;
            leave ``None`` for user models (then pass ``model=`` when loading).
        key: secret signing key (bytes, or str as UTF-8): adds an HMAC-SHA256 signature that
            ``load_packed(..., key=)`` verifies. Without it the file carries only the
            SHA-256 checksum, which detects damage but not tampering.

    Returns:
        A :class:`PackedReport`: file size against the cost model, per-layer storage.

    Raises:
        ExportError: the model is not quantized, not calibrated, or a layer's scheme/bit
            width cannot be stored exactly (the message names the layer).
    """
    from safetensors.numpy import save_file

    sign_key = as_key(key)
    info = _quant_info(qmodel)
    policy: Policy = info.policy
    table: LayerTable = info.layer_table
    was_training = qmodel.training
    qmodel.eval()
    tensors: dict[str, np.ndarray] = {}
    layer_meta: dict[str, dict[str, Any]] = {}
    differences: list[str] = []
    try:
        with torch.no_grad():
            for name, layer in quantized_layers(qmodel).items():
                entry: dict[str, Any] = {}
                if layer.weight_quantizer is not None:
                    entry["weight"] = _pack_weight(name, layer, tensors)
                iq = layer.input_quantizer
                if iq is not None:
                    scheme = _check_storable(f"{name}.input", iq.spec)
                    if scheme.range_based:
                        if not iq.ready:
                            raise ExportError(f"{name}: the input quantizer is not calibrated; "
                                              "pass calibration data to bitsmith.quantize")
                        _store_params(tensors, f"{name}.input", scheme, iq.params(),
                                      iq.spec.bits)
                    else:
                        groups = 1 if iq.axis is None else table[name].input_shape[iq.axis]
                        saved = groups * 4 * scheme.float_params_for(iq.spec.bits)
                        differences.append(
                            f"{name}.input: {iq.spec.scheme} computes its parameters from the "
                            f"data at run time, nothing stored (-{saved} bytes vs cost model)")
                layer_meta[name] = entry
    finally:
        qmodel.train(was_training)
    skip = quantized_weight_keys(qmodel)
    param_names = {n for n, _ in qmodel.named_parameters()}
    extra_buffers = 0
    for key, value in qmodel.state_dict().items():
        if key in skip or any(q in key for q in QUANTIZER_KEYS):
            continue
        tensors[key] = value.detach().cpu().contiguous().numpy()
        if key not in param_names:
            extra_buffers += tensors[key].nbytes
    if extra_buffers:
        differences.append(f"buffers (e.g. unfolded BatchNorm statistics) are stored but not "
                           f"in the cost model: +{extra_buffers} bytes")
    sparse = {n: {"mask": e["weight"]["mask"], "k": e["weight"]["index_bits"],
                  "bytes": int(tensors[f"{n}.weight.mask"].size),
                  "survivors": e["weight"]["survivors"]}
              for n, e in layer_meta.items() if "mask" in e.get("weight", {})}
    # the cost model charges each mask with the same size rule (cost.sparse.mask_layout)
    cost = estimate(table, policy, {
        n: MaskLayout(layer_meta[n]["weight"]["count"], sp["survivors"], sp["mask"], sp["k"],
                      sp["bytes"]) for n, sp in sparse.items()})
    for name, sp in sparse.items():
        expected = cost.layers[table.names.index(name)].weight_bytes
        actual = tensors[f"{name}.weight.codes"].nbytes + sp["bytes"]
        if actual != expected:
            differences.append(
                f"{name}.weight: {sp['survivors']} of {layer_meta[name]['weight']['count']} "
                f"weights survive, mask as {sp['mask']}: {actual - expected:+d} bytes vs the "
                f"cost model")
    blobs = to_blobs(tensors, layout(qmodel, table, sparse))
    report = info.report
    meta: dict[str, Any] = {
        "format": FORMAT, "versions": versions(),
        "model": {"registry": model_name, "kwargs": model_kwargs or {}, "class": report.model},
        "conversion": {"traced": report.traced, "folded_bn": len(report.folded_bn)},
        "policy": compact_policy(policy), "sparse": sparse,
        "state": state_signature(qmodel),
    }
    if example_inputs is not None:
        examples = _example_tuple(example_inputs)
        meta["inputs"] = [list(t.shape) for t in examples]
        meta["input_dtypes"] = [str(t.dtype).removeprefix("torch.") for t in examples]
    else:
        meta["layer_table"] = compact_table(table)
    meta_json = json.dumps(meta, separators=(",", ":"))
    path = Path(path)
    header = {"bitsmith": meta_json, "sha256": digest(blobs, meta_json)}
    if sign_key is not None:
        header[SIGNATURE_KEY] = signature(blobs, meta_json, sign_key)
    with atomic_path(path) as tmp:
        save_file(blobs, str(tmp), metadata=header)
    tensor_bytes = sum(a.nbytes for a in blobs.values())
    file_bytes = path.stat().st_size
    return PackedReport(
        path=str(path), file_bytes=file_bytes, tensor_bytes=tensor_bytes,
        header_bytes=file_bytes - tensor_bytes, predicted_bytes=cost.size_bytes,
        fp32_bytes=cost.fp32_bytes, avg_weight_bits=cost.avg_weight_bits,
        differences=differences, layers=layer_meta)


def _example_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


# --------------------------------------------------------------------------- load
def read_header(path: str | Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``path`` (``{}`` when unreadable); not verified."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # safetensors raises several types
        return {}


def read_packed(path: str | Path, key: bytes | str | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Blobs and verified metadata of an artifact.

    Raises:
        ArtifactError: missing, truncated or damaged file (checksum); with ``key``, also a
            file that is not signed or whose HMAC-SHA256 signature does not match.
    """
    from safetensors import safe_open

    key = as_key(key)
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"packed artifact {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types
        raise ArtifactError(f"{path} is not a readable safetensors file (truncated or "
                            f"corrupted?): {err}") from None
    if "bitsmith" not in header or "sha256" not in header:
        raise ArtifactError(f"{path} is a safetensors file but not a bitsmith packed artifact")
    meta_json = header["bitsmith"]
    if digest(tensors, meta_json) != header["sha256"]:
        raise ArtifactError(f"{path}: checksum mismatch, the file was modified or damaged")
    if key is not None:
        stored = header.get(SIGNATURE_KEY)
        if stored is None:
            raise ArtifactError(f"{path} is not signed; refusing it because a key was given "
                                "(sign it with save_packed(..., key=) / --key-file)")
        if not hmac.compare_digest(str(stored), signature(tensors, meta_json, key)):
            raise ArtifactError(f"{path}: signature mismatch: the file was modified after "
                                "signing, or signed with another key")
    try:
        meta = json.loads(meta_json)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path}: the metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{path}: unsupported format {found!r}; "
                            f"this bitsmith reads {FORMAT}")
    return tensors, meta


def _rebuild(model: nn.Module, meta: dict[str, Any]
             ) -> tuple[nn.Module, LayerTable, ConversionReport]:
    """The converted float model (traced, BN folded as recorded), its LayerTable and report."""
    conv = meta["conversion"]
    if "inputs" in meta:
        dtypes = meta.get("input_dtypes") or ["float32"] * len(meta["inputs"])
        if any(not isinstance(getattr(torch, d, None), torch.dtype) for d in dtypes):
            raise ArtifactError(f"unknown input dtype in the artifact: {dtypes}")
        zeros = tuple(torch.zeros(shape, dtype=getattr(torch, d))
                      for shape, d in zip(meta["inputs"], dtypes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)
            try:
                work, table, report = convert(model, zeros, fold_bn=conv["folded_bn"] > 0)
            except Exception as err:  # the model may reject the inputs
                raise ArtifactError(f"the given model cannot run the artifact's input shapes "
                                    f"{meta['inputs']}: {err}") from None
        if report.traced != conv["traced"] or len(report.folded_bn) != conv["folded_bn"]:
            raise ArtifactError("the given model converts differently from the artifact's "
                                "(tracing / BatchNorm folding): is it the same architecture?")
        return work, table, report
    work = copy.deepcopy(model).eval()
    report = ConversionReport(model=meta["model"]["class"], traced=conv["traced"],
                              rewritten=rewrite_modules(work))
    if conv["traced"]:
        traced = try_trace(work)
        if not isinstance(traced, fx.GraphModule):
            raise ArtifactError(f"the artifact was made from a traced model but this one does "
                                f"not trace: {traced.message()}")
        work = traced
        if conv["folded_bn"]:
            report.folded_bn = fold_batchnorm(work)
            if len(report.folded_bn) != conv["folded_bn"]:
                raise ArtifactError("the given model's BatchNorm layers fold differently from "
                                    "the artifact's: is it the same architecture?")
    return work, table_from(meta["layer_table"]), report


def _build_model(meta: dict[str, Any], model: nn.Module | None) -> nn.Module:
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        return model
    registry = meta["model"].get("registry")
    if not registry:
        raise ArtifactError(
            f"this artifact holds a user model ({meta['model'].get('class')}); pass an "
            "un-quantized instance of its architecture: load_packed(path, model=...)")
    from bitsmith.models import build_model

    return build_model(registry, **meta["model"].get("kwargs", {}))


def load_packed(path: str | Path, model: nn.Module | None = None, *,
                key: bytes | str | None = None) -> nn.Module:
    """Rebuild the quantized model stored at ``path``.

    Args:
        path: a file written by :func:`save_packed`.
        model: an un-quantized instance of the architecture (any weights); needed unless the
            artifact names a built-in model (``bitsmith.models.build_model``).
        key: the signing key given to :func:`save_packed`; the file must then carry a
            matching HMAC-SHA256 signature (without a key the signature is not checked).

    Returns:
        The quantized model (eval mode) with ``.bitsmith`` (Policy, LayerTable). Its outputs
        equal those of the model that was saved, bit for bit. Weight quantizers are frozen
        (the weights hold their quantized values); see :func:`bitsmith.export.thaw_weights`.

    Raises:
        ArtifactError: missing, truncated or damaged file, a bad or missing signature (with
            ``key``), or a model that does not fit.
    """
    from bitsmith.quantize import QuantInfo

    blobs, meta = read_packed(path, key)
    try:
        policy = policy_from(meta["policy"])
    except (PolicyError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{path}: the stored policy is invalid: {err}") from None
    try:
        work, table, report = _rebuild(_build_model(meta, model), meta)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{path}: malformed metadata ({type(err).__name__}: {err}); "
                            "the file was not written by this bitsmith") from None
    try:
        apply_policy(work, table, policy, report)
    except (PolicyError, AttributeError) as err:
        raise ArtifactError(f"the model does not have the artifact's layers: {err}") from None
    if state_signature(work) != meta["state"]:
        raise ArtifactError("the model does not match the artifact: its parameters have other "
                            "names or shapes (a different architecture or configuration?)")
    try:
        tensors = from_blobs(blobs, layout(work, table, meta["sparse"]))
    except ValueError as err:
        raise ArtifactError(f"the model does not match the artifact: {err}") from None
    layers = quantized_layers(work)
    skip = quantized_weight_keys(work)
    shapes = {k: v.shape for k, v in work.state_dict().items()}
    state = {k: torch.from_numpy(tensors[k].copy()).reshape(shapes[k]) for k in shapes
             if k not in skip and not any(q in k for q in QUANTIZER_KEYS)}
    work.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name, layer in layers.items():
            _restore_layer(name, layer, tensors, meta["sparse"].get(name), table[name])
    report.model = meta["model"]["class"]
    QuantInfo(policy, table, report).attach(work)
    return work


def _restore_layer(name: str, layer: QuantizedLayer, tensors: dict[str, np.ndarray],
                   sparse: dict[str, Any] | None, info: LayerInfo) -> None:
    wq = layer.weight_quantizer
    if wq is not None:
        spec = wq.spec
        scheme = get_scheme(spec.scheme)
        shape = _param_shape(tuple(layer.weight.shape), wq.axis, wq.block_size)
        params = _restore_params(tensors, f"{name}.weight", scheme, spec, shape)
        count = layer.weight.numel()
        keep = None
        if sparse:
            keep = decode_mask(sparse["mask"], sparse["k"], tensors[f"{name}.weight.mask"],
                               count, sparse["survivors"])
            flat = np.zeros(count, dtype=np.int64)
            flat[keep] = unpack_bits(tensors[f"{name}.weight.codes"], spec.bits, int(keep.sum()))
        else:
            flat = unpack_bits(tensors[f"{name}.weight.codes"], spec.bits, count)
        codes = torch.from_numpy(flat).reshape(layer.weight.shape)
        # a new parameter: a weight tied to another module (a language-model head tied to
        # the embedding) keeps its float values there, as in the simulation
        layer.weight = nn.Parameter(_decode_weight(scheme, codes, keep, params, spec.bits,
                                                   wq.block_size),
                                    requires_grad=layer.weight.requires_grad)
        wq._shape_hint = shape
        if scheme.range_based:
            wq._store(params)
        freeze(wq)
    iq = layer.input_quantizer
    if iq is not None and iq.scheme.range_based:
        shape = _param_shape(info.input_shape, iq.axis)
        iq._store(_restore_params(tensors, f"{name}.input", iq.scheme, iq.spec, shape))
        iq._shape_hint = shape
