"""Quantization-aware fine-tuning of a derived Policy (saving / loading the result:
:mod:`bitsmith.trained`).

:func:`build_qat_model` turns the search's float model (BN folded, weights updated by the
search) into a quantized model of the ``bitsmith.quantize`` kind (``model.bitsmith`` holds
the Policy, LayerTable and conversion report, so ``bitsmith.export`` consumes it). Every
uniform-family quantizer is made LSQ-learnable and starts from the step size the search
learned for that candidate (activation quantizers without one are calibrated).
:func:`finetune` trains it with :func:`bitsmith.training.train` (optional distillation
from the FP32 model). :func:`bitsmith.trained.save_result` writes ``policy.yaml`` and
``weights.safetensors`` (float weights + quantizer parameters); ``load_result`` rebuilds the
quantized model (in :mod:`bitsmith.trained`, below the producers, so consumers read it).

BN handling: BatchNorm is folded into the preceding convolution before the search
(``build_supernet(fold_bn=True)``), so training, evaluation and the exported integer model
compute the same function and no running statistics can drift; with ``fold_bn=False``
use ``TrainConfig.freeze_bn_after`` to freeze the statistics after a few hundred steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from bitsmith.graph.convert import ConversionReport, apply_policy
from bitsmith.graph.qmodules import quantized_layers, untwin
from bitsmith.graph.quantizer import Quantizer
from bitsmith.policy import LayerSpec, Policy, QSpec
from bitsmith.quantize import QuantInfo, calibrate
from bitsmith.schemes import get_scheme
from bitsmith.search.supernet import SearchLayerMixin, Supernet
from bitsmith.training import Callback, TrainConfig, TrainResult, train


def learnable(policy: Policy) -> Policy:
    """``policy`` with ``learnable=True`` on every QSpec whose scheme has learnable keys."""
    def fix(q: QSpec | None) -> QSpec | None:
        if q is None or not get_scheme(q.scheme).learnable_keys():
            return q
        return q.replace(learnable=True)

    return Policy({n: LayerSpec(fix(s.weight), fix(s.act), s.sparsity) for n, s in policy.items()})


def float_model_of(net: Supernet) -> nn.Module:
    """A copy of the supernet's model with plain float layers (search weights kept)."""
    sources = [m.search_source for m in net.layers()]
    net.set_source(None)
    try:
        model = copy.deepcopy(net.model)
    finally:
        for m, src in zip(net.layers(), sources):
            m.search_source = src
    for name in net.names:
        untwin(model.get_submodule(name), SearchLayerMixin,
               ("weight_quantizers", "act_quantizers"),
               ("search_index", "search_source", "search_path", "search_bypass"))
    return model


def _copy_quantizer(dst: Quantizer, src: Quantizer) -> bool:
    if not src.ready or not src._param_keys or src.spec.scheme != dst.spec.scheme:
        return False
    dst._shape_hint = src._shape_hint
    dst._store({k: v.detach() for k, v in src.params().items()})
    dst._fitted_version = None
    return True


def build_qat_model(net: Supernet, policy: Policy, calibration: Iterable | None = None,
                    calib_batches: int = 4) -> nn.Module:
    """Quantized model of ``policy`` on the search's weights, quantizers warm-started.

    Args:
        net: the supernet after the search.
        policy: the derived Policy (made LSQ-learnable here).
        calibration: ``(inputs, labels)`` batches for activation quantizers that have no
            search-trained counterpart (the fixed first/last layers).
        calib_batches: batches of ``calibration`` used.
    """
    policy = learnable(policy)
    model = float_model_of(net)
    report = ConversionReport(model=type(model).__name__, traced=True)
    apply_policy(model, net.table, policy, report)
    qlayers = quantized_layers(model)
    missing = []
    for name, m in qlayers.items():
        if name in net.names:
            src = cast(SearchLayerMixin, net.model.get_submodule(name))
            spec = policy[name]
            k = _index(net.weight_specs, spec.weight)
            j = _index(net.act_specs, spec.act)
            if m.weight_quantizer is not None and k is not None:
                _copy_quantizer(m.weight_quantizer, src.candidates("w")[k])
            if m.input_quantizer is not None and (j is None or not _copy_quantizer(
                    m.input_quantizer, src.candidates("a")[j])):
                missing.append(name)
        elif m.input_quantizer is not None:
            missing.append(name)
    if missing:
        if calibration is None:
            raise ValueError(f"layers {missing[:4]} need calibration data for their "
                             "activation quantizers")
        _calibrate_some(model, missing, calibration, calib_batches)
    # Weight quantizers without warm start fit themselves on the first forward; do it now
    # so that their LSQ parameters exist before the optimizer is built.
    with torch.no_grad():
        for m in qlayers.values():
            if m.weight_quantizer is not None and not m.weight_quantizer._param_keys:
                m.weight_quantizer(m.weight)
    QuantInfo(policy, net.table, report).attach(model)
    return model


def _index(specs: list[QSpec], spec: QSpec | None) -> int | None:
    if spec is None:
        return None
    for i, s in enumerate(specs):
        if s.replace(learnable=spec.learnable) == spec:
            return i
    return None


def _calibrate_some(model: nn.Module, names: list[str], data: Iterable, n: int) -> None:
    """Calibrate only the activation quantizers of ``names`` (others keep their ranges)."""
    qlayers = quantized_layers(model)
    keep = {nm: m.input_quantizer for nm, m in qlayers.items() if nm not in names}
    for nm in keep:
        qlayers[nm].input_quantizer = None
    try:
        calibrate(model, data, num_batches=n)
    finally:
        for nm, q in keep.items():
            qlayers[nm].input_quantizer = q


def finetune(qmodel: nn.Module, train_loader: Iterable, config: TrainConfig, *,
             teacher: nn.Module | None = None, val_loader: Iterable | None = None,
             callbacks: tuple[Callback, ...] = ()) -> TrainResult:
    """QAT of a quantized model (weights and LSQ steps) with :func:`train`."""
    return train(qmodel, train_loader, config, teacher=teacher, val_loader=val_loader,
                 callbacks=callbacks)


