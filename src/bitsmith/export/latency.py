"""Latency lookup tables: per-layer latency of each candidate precision, measured on a runtime.

``measure_latency_table(model_or_table, candidates)`` builds, for every
quantizable layer and every candidate precision, a one-layer model for the
target runtime, times it (interleaved medians) and caches the result in a JSON
file, so that the tuner, the ILP allocator and the differentiable search can
use *measured* latency as a budget: ``table.latency(layer, spec)`` in
milliseconds, ``table.total(policy)`` for a whole Policy.

A candidate is a :class:`~bitsmith.policy.LayerSpec` (or ``None`` for float);
its table key is :func:`precision_key`: ``"fp32"``, ``"w{b_w}a{b_a}"`` (integer kernels) or
``"w{b_w}g{N}"`` / ``"w{b_w}g{N}a{b_a}"`` (block-wise weights: ``MatMulNBits`` on Linear
layers, timed as a one-node ``MatMulNBits`` model with float input).

ONNX Runtime (CPU) is built in: an integer candidate is timed as the layer's
integer kernel, ``uint8 input → DequantizeLinear → Conv/Gemm (int8 weights,
int32 bias) → QuantizeLinear → uint8 output`` (fused into ``QLinearConv`` /
``QGemm``), plus a ``Clip`` + ``QuantizeLinear`` on its input when the
activations have fewer than 8 bits (the narrower grid is not fusable); the
float candidate as the float op. Other runtimes plug in with
:func:`register_runtime` (an object with ``name``, ``fingerprint()`` and
``measure(geometry, keys, batch)``).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from torch import nn

from bitsmith.atomic import atomic_write_text
from bitsmith.graph import LayerTable
from bitsmith.policy import LayerSpec, Policy
from bitsmith.schemes import get_scheme

FP32 = "fp32"


def precision_key(spec: LayerSpec | None) -> str:
    """``"fp32"`` for a float layer (or one without an integer kernel), else ``"w{b}a{b}"``.

    A layer runs an integer kernel when both its weight and its input activation are on
    integer grids (or, for weights, an exact 8-bit lattice: binary, ternary) of at most 8 bits.
    """
    if spec is None or spec.weight is None:
        return FP32
    nbits = _nbits_key(spec)
    if nbits is not None:
        return nbits
    if spec.act is None:
        return FP32
    w, a = spec.weight, spec.act
    w_int = get_scheme(w.scheme).integer_grid or w.scheme in ("binary", "ternary")
    a_int = get_scheme(a.scheme).integer_grid and a.granularity == "tensor"
    if not (w_int and a_int) or w.bits > 8 or a.bits > 8:
        return FP32
    return f"w{w.bits}a{a.bits}"


def _nbits_key(spec: LayerSpec) -> str | None:
    """``"w{b}g{N}"`` (``+ "a{b}"`` with an 8-bit-or-less integer input grid) for a block-wise
    weight that ONNX Runtime runs as ``MatMulNBits`` (on Linear layers; convolutions run it as
    their float op, and the table times that)."""
    from bitsmith.export.qparams import NBITS
    from bitsmith.policy import block_size

    w, a = spec.weight, spec.act
    if w is None:
        return None
    block = block_size(w.granularity)
    if block is None or w.bits not in NBITS or not get_scheme(w.scheme).integer_grid:
        return None
    act = (f"a{a.bits}" if a is not None and a.bits <= 8 and a.granularity == "tensor"
           and get_scheme(a.scheme).integer_grid else "")
    return f"w{w.bits}g{block}{act}"


def _nbits_of(key: str) -> tuple[int, int, int | None]:
    """``(weight bits, block, act bits or None)`` of a ``w{b}g{N}[a{b}]`` key."""
    w, rest = key[1:].split("g")
    block, _, act = rest.partition("a")
    return int(w), int(block), int(act) if act else None


def _bits_of(key: str) -> tuple[int, int]:
    w, a = key[1:].split("a")
    return int(w), int(a)


@dataclass(frozen=True)
class LayerGeometry:
    """What a one-layer benchmark needs; shapes per example (no batch dimension)."""

    name: str
    op: str  # "Conv", "Gemm" or "ConvTranspose"
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def geometry_from_model(model: nn.Module, table: LayerTable) -> list[LayerGeometry]:
    """Exact geometry of each layer of ``table`` from the modules of ``model``."""
    out = []
    for info in table:
        module = model.get_submodule(info.name)
        if info.type == "Linear":
            linear = cast(nn.Linear, module)
            out.append(LayerGeometry(info.name, "Gemm", tuple(info.input_shape[1:]),
                                     tuple(linear.weight.shape), bias=linear.bias is not None))
            continue
        m = cast(nn.Conv2d, module)  # any Conv / ConvTranspose: the fields below are shared
        n = m.weight.dim() - 2
        pad: str | tuple[int, ...] = m.padding
        if isinstance(pad, str):  # 'same' / 'valid'
            pad = tuple((k - 1) * d // 2 for k, d in zip(m.kernel_size, _tuple(m.dilation, n))
                        ) if pad == "same" else (0,) * n
        op = "ConvTranspose" if info.type.startswith("ConvTranspose") else "Conv"
        out.append(LayerGeometry(info.name, op, tuple(info.input_shape[1:]),
                                 tuple(m.weight.shape), _tuple(m.stride, n), _tuple(pad, n),
                                 _tuple(m.dilation, n), m.groups, m.bias is not None))
    return out


def geometry_from_table(table: LayerTable) -> list[LayerGeometry]:
    """Geometry inferred from shapes alone: stride from input/output sizes, 'same'-style padding.

    Dilation is assumed 1. Use :func:`geometry_from_model` when the model is at hand.
    """
    out = []
    for info in table:
        if info.type == "Linear":
            out.append(LayerGeometry(info.name, "Gemm", tuple(info.input_shape[1:]),
                                     info.weight_shape, bias=info.bias_params > 0))
            continue
        if info.type.startswith("ConvTranspose"):
            raise ValueError(f"{info.name}: ConvTranspose geometry needs the model; "
                             "pass the model instead of its LayerTable")
        kernel = info.weight_shape[2:]
        ins, outs = info.input_shape[2:], info.output_shape[2:]
        stride = tuple(max(1, math.ceil(i / o)) for i, o in zip(ins, outs))
        pad = tuple(max(0, math.ceil(((o - 1) * s + k - i) / 2))
                    for i, o, s, k in zip(ins, outs, stride, kernel))
        out.append(LayerGeometry(info.name, "Conv", tuple(info.input_shape[1:]),
                                 info.weight_shape, stride, pad, (1,) * len(kernel), info.groups,
                                 info.bias_params > 0))
    return out


class LatencyRuntime(Protocol):
    """A runtime that times one-layer models."""

    name: str

    def fingerprint(self) -> dict[str, Any]:
        """What makes measurements comparable (versions, CPU, threads, batch)."""

    def measure(self, geometry: LayerGeometry, keys: list[str], batch: int
                ) -> dict[str, float]:
        """Median milliseconds per call for each precision key."""


class OnnxRuntimeCPU:
    """ONNX Runtime, CPU execution provider, fixed threads, interleaved medians."""

    name = "onnxruntime"

    def __init__(self, threads: int = 2, runs: int = 50, warmup: int = 5) -> None:
        self.threads, self.runs, self.warmup = threads, runs, warmup

    def fingerprint(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runtime": self.name, "version": ort.__version__, "threads": self.threads,
                "cpu": _cpu_name(), "machine": platform.machine()}

    def measure(self, geometry: LayerGeometry, keys: list[str], batch: int
                ) -> dict[str, float]:
        from bitsmith.export.ort import interleaved_latency, make_session

        sessions, feeds = [], []
        for key in keys:
            model, x = one_layer_model(geometry, key, batch)
            sessions.append(make_session(model.SerializeToString(), self.threads))
            feeds.append(x)
        timings = interleaved_latency(sessions, [[f] for f in feeds], self.runs, self.warmup,
                                      per_session=True)
        return {k: t.median_ms for k, t in zip(keys, timings)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _input_shape(g: LayerGeometry, batch: int) -> tuple[int, ...]:
    """The timed input: ``(batch, *input_shape)``; a Linear on ``(..., K)`` inputs (tokens,
    pixels) as one ``(batch · rows, K)`` matrix."""
    if g.op == "Gemm":
        return (batch * math.prod(g.input_shape[:-1]), g.input_shape[-1])
    return (batch, *g.input_shape)


def one_layer_model(geometry: LayerGeometry, key: str, batch: int):
    """``(onnx.ModelProto, input array)`` timing one layer at precision ``key``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    g = geometry
    x_shape = _input_shape(g, batch)
    w = rng.standard_normal(g.weight_shape).astype(np.float32) * 0.05
    out_ch = g.weight_shape[0] if g.op != "ConvTranspose" else g.weight_shape[1] * g.groups
    attrs: dict[str, Any] = {}
    if g.op in ("Conv", "ConvTranspose"):
        attrs = {"strides": list(g.stride), "pads": list(g.padding) * 2,
                 "dilations": list(g.dilation), "group": g.groups}
    else:
        attrs = {"transB": 1}
    inits, nodes = [], []
    if "g" in key:
        return _nbits_layer_model(g, key, batch, rng) if g.op == "Gemm" else one_layer_model(
            g, FP32, batch)  # no block-wise convolution kernel: the float op runs
    integer = key != FP32 and g.op != "ConvTranspose"
    if not integer:
        inits.append(numpy_helper.from_array(w, "w"))
        ins = ["x", "w"]
        if g.bias:
            inits.append(numpy_helper.from_array(np.zeros(out_ch, np.float32), "b"))
            ins.append("b")
        nodes.append(helper.make_node(g.op, ins, ["y"], **attrs))
        x: np.ndarray = rng.standard_normal(x_shape).astype(np.float32)
        in_type, out_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        w_bits, a_bits = _bits_of(key)
        qmax = max(2 ** (w_bits - 1) - 1, 1)
        scale = np.full(out_ch, 0.05 * 3 / qmax, np.float32)
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -qmax, qmax)
        inits += [numpy_helper.from_array(q.astype(np.int8), "wq"),
                  numpy_helper.from_array(scale, "ws"),
                  numpy_helper.from_array(np.zeros(out_ch, np.int8), "wz"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0, np.uint8), "xz"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
                  numpy_helper.from_array(np.array(128, np.uint8), "yz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0))
        src = "x"
        if a_bits < 8:
            inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                      numpy_helper.from_array(np.array(0.02 * (2 ** a_bits - 1), np.float32),
                                              "hi")]
            nodes += [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
                      helper.make_node("Clip", ["xf", "lo", "hi"], ["xc"]),
                      helper.make_node("QuantizeLinear", ["xc", "xs", "xz"], ["xq"])]
            src = "xq"
        nodes.append(helper.make_node("DequantizeLinear", [src, "xs", "xz"], ["xd"]))
        ins = ["xd", "w"]
        if g.bias:
            bscale = (scale * np.float32(0.02)).astype(np.float32)
            inits += [numpy_helper.from_array(np.zeros(out_ch, np.int32), "bq"),
                      numpy_helper.from_array(bscale, "bs"),
                      numpy_helper.from_array(np.zeros(out_ch, np.int32), "bz")]
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0))
            ins.append("b")
        nodes += [helper.make_node(g.op, ins, ["yf"], **attrs),
                  helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
        x = rng.integers(0, 256, x_shape, dtype=np.uint8)
        in_type, out_type = TensorProto.UINT8, TensorProto.UINT8
    graph = helper.make_graph(
        nodes, f"layer_{key}", [helper.make_tensor_value_info("x", in_type, list(x_shape))],
        [helper.make_tensor_value_info("y", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x


def _nbits_layer_model(g: LayerGeometry, key: str, batch: int, rng: np.random.Generator):
    """``float input [→ Q → DQ] → MatMulNBits(block-wise weights) (+ bias)`` for one Linear."""
    from onnx import TensorProto, helper, numpy_helper

    from bitsmith.export.qparams import _pack_codes

    bits, block, act = _nbits_of(key)
    n, k = g.weight_shape
    blocks = -(-k // block)
    codes = rng.integers(0, 2 ** bits, (n, blocks, block), dtype=np.uint8)
    inits = [numpy_helper.from_array(_pack_codes(codes, bits), "wq"),
             numpy_helper.from_array(np.full(n * blocks, 0.01, np.float32), "ws")]
    nodes, src = [], "x"
    if act is not None:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                  numpy_helper.from_array(np.array(128, np.uint8), "xz")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
        src = "xd"
    out = "y" if not g.bias else "mm"
    nodes.append(helper.make_node("MatMulNBits", [src, "wq", "ws"], [out], domain="com.microsoft",
                                  K=k, N=n, bits=bits, block_size=block))
    if g.bias:
        inits.append(numpy_helper.from_array(np.zeros(n, np.float32), "b"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"]))
    x_shape = _input_shape(g, batch)
    graph = helper.make_graph(
        nodes, f"layer_{key}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model, rng.standard_normal(x_shape).astype(np.float32)


_RUNTIMES: dict[str, Callable[..., LatencyRuntime]] = {"onnxruntime": OnnxRuntimeCPU}


def register_runtime(name: str, factory: Callable[..., LatencyRuntime]) -> None:
    """Make ``measure_latency_table(..., runtime=name)`` use ``factory(**runtime_options)``."""
    _RUNTIMES[name] = factory


class LatencyTable:
    """Measured per-layer latency (milliseconds per call at ``batch``) of precision keys."""

    def __init__(self, entries: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any],
                 geometry: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.entries = {k: dict(v) for k, v in entries.items()}
        self.meta = dict(meta)
        self.geometry = dict(geometry or {})

    @property
    def layers(self) -> list[str]:
        return list(self.entries)

    def latency(self, layer: str, spec: LayerSpec | None) -> float:
        """Milliseconds of ``layer`` at ``spec``'s precision (``None`` = float)."""
        if layer not in self.entries:
            raise KeyError(f"no latency measured for layer {layer!r}")
        key = precision_key(spec)
        if key not in self.entries[layer]:
            raise KeyError(f"{layer}: precision {key!r} was not measured; measured: "
                           f"{sorted(self.entries[layer])}")
        return self.entries[layer][key]

    def total(self, policy: Policy, layers: Iterable[str] | None = None) -> float:
        """Sum of per-layer latencies under ``policy`` (layers it omits are float), in ms."""
        names = list(layers) if layers is not None else self.layers
        return sum(self.latency(n, policy.get(n)) for n in names)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "bitsmith.latency/1", "meta": self.meta, "geometry": self.geometry,
                "layers": self.entries}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ConfigError: missing or unreadable file, or not a ``bitsmith.latency/1`` table.
        """
        from bitsmith.config import ConfigError, read_structured_file

        data = read_structured_file(path, "latency table")
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != "bitsmith.latency/1" or \
                not isinstance(layers, dict) or not isinstance(data.get("meta"), dict) or \
                not all(isinstance(v, dict) and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())
                        for v in layers.values()):
            raise ConfigError(f"{path} is not a bitsmith latency table (bitsmith.latency/1: "
                              "{'layers': {layer: {precision: ms}}, 'meta': {...}}); "
                              "write one with 'bitsmith export' / measure_latency_table")
        return cls(layers, data["meta"], data.get("geometry"))


def measure_latency_table(model_or_table: nn.Module | LayerTable,
                          candidates: Iterable[LayerSpec | None], runtime: str = "onnxruntime",
                          cache_path: str | Path | None = None, *, example_inputs: Any = None,
                          batch: int = 1, runtime_options: Mapping[str, Any] | None = None,
                          progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Measure (or reuse from ``cache_path``) each layer's latency at each candidate precision.

    Args:
        model_or_table: a model (with ``example_inputs``; exact geometry, BN folded first)
            or a :class:`LayerTable` (geometry inferred from shapes).
        candidates: LayerSpecs (``None`` = float); deduplicated by :func:`precision_key`.
        runtime: a registered runtime name (``"onnxruntime"`` built in).
        cache_path: JSON file; entries measured with the same runtime fingerprint, batch and
            layer geometry are reused, new ones are added and the file is rewritten.
        batch: batch size of the timed calls.
        runtime_options: keyword arguments of the runtime (ORT: ``threads``, ``runs``).
        progress: called with each layer name as it is measured.

    Returns:
        A :class:`LatencyTable` in milliseconds per call.
    """
    if runtime not in _RUNTIMES:
        raise KeyError(f"unknown latency runtime {runtime!r}; available: {sorted(_RUNTIMES)}")
    rt = _RUNTIMES[runtime](**dict(runtime_options or {}))
    if isinstance(model_or_table, LayerTable):
        geoms = geometry_from_table(model_or_table)
    elif isinstance(model_or_table, nn.Module):
        if example_inputs is None:
            raise ValueError("measuring a model needs example_inputs")
        from bitsmith.quantize import prepare

        float_model, layer_table, _ = prepare(model_or_table, example_inputs)
        geoms = geometry_from_model(float_model, layer_table)
    else:
        raise TypeError("model_or_table must be an nn.Module or a LayerTable")
    keys = sorted({precision_key(c) for c in candidates})
    meta = {**rt.fingerprint(), "batch": batch, "unit": "ms"}
    cached = _load_cache(cache_path, meta)
    entries: dict[str, dict[str, float]] = {}
    geometry: dict[str, dict[str, Any]] = {}
    for g in geoms:
        old = cached.get(g.name)
        have = dict(old["ms"]) if old and old["geometry"] == _jsonable(g.to_dict()) else {}
        todo = [k for k in keys if k not in have]
        if todo:
            if progress is not None:
                progress(g.name)
            have.update(rt.measure(g, todo, batch))
        entries[g.name] = have
        geometry[g.name] = _jsonable(g.to_dict())
    table = LatencyTable(entries, meta, geometry)
    if cache_path is not None:
        _save_cache(cache_path, meta, entries, geometry, cached)
    return table


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))


def _load_cache(path: str | Path | None, meta: dict[str, Any]) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):   # unreadable cache: measure again
        return {}
    if not isinstance(data, dict) or data.get("meta") != _jsonable(meta) or \
            not isinstance(data.get("layers"), dict):
        return {}
    return {n: {"ms": ms, "geometry": data.get("geometry", {}).get(n)}
            for n, ms in data.get("layers", {}).items()}


def _save_cache(path: str | Path, meta: dict[str, Any], entries: dict[str, dict[str, float]],
                geometry: dict[str, dict[str, Any]], cached: dict[str, Any]) -> None:
    merged = {n: c["ms"] for n, c in cached.items()}
    merged_geo = {n: c["geometry"] for n, c in cached.items()}
    merged.update(entries)
    merged_geo.update(geometry)
    LatencyTable(merged, meta, merged_geo).save(path)
