"""AIMET AdaRound on a CIFAR ResNet: the peer run of benchmarks/ptq_reconstruction.py.

Runs inside the separate AIMET venv (aimet-torch and its torch), which
ptq_reconstruction.py creates. Reads the calibration / test / validation tensors the main
benchmark saved (already normalised), builds the ResNet with bitsmith's model definition
(imported from the source tree given by ``--src``), then follows AIMET's documented recipe:
prepare_model, fold_all_batch_norms, Adaround.apply_adaround (weights only, tf-enhanced
ranges, first and last layer 8-bit, ``--iterations`` per layer, the calibration images),
QuantizationSimModel with the AdaRound encodings frozen and activation encodings computed
on the same calibration images. Prints one JSON line: predictions and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch


def load_resnet(src: str, depth: int) -> torch.nn.Module:
    """The pretrained CIFAR ResNet from bitsmith's source tree (its model definition and safe
    checkpoint reader only; bitsmith is not installed in this venv)."""
    sys.path.insert(0, src)
    from bitsmith.models.cifar_resnet import load_pretrained_cifar_resnet

    return load_pretrained_cifar_resnet(depth)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    return torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).tolist()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--src", required=True, help="bitsmith's src folder")
    p.add_argument("--data", required=True)
    p.add_argument("--param-bw", type=int, required=True)
    p.add_argument("--output-bw", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import aimet_torch
    from aimet_common.defs import QuantScheme
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel
    from torch.utils.data import DataLoader, TensorDataset

    data = np.load(args.data)
    calib = torch.from_numpy(data["calib"])
    dummy = calib[:1]
    t0 = time.perf_counter()
    model = prepare_model(load_resnet(args.src, args.depth))
    fold_all_batch_norms(model, input_shapes=tuple(dummy.shape))
    modules = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    first, last = modules[0], modules[-1]
    loader = DataLoader(TensorDataset(calib), batch_size=args.batch_size, shuffle=False)
    params = AdaroundParameters(data_loader=loader, num_batches=len(loader),
                                default_num_iterations=args.iterations,
                                forward_fn=lambda m, batch: m(batch[0]))
    workdir = tempfile.mkdtemp(prefix="aimet_adaround_")
    t1 = time.perf_counter()
    ada_model = Adaround.apply_adaround(
        model, dummy, params, path=workdir, filename_prefix="adaround",
        default_param_bw=args.param_bw, param_bw_override_list=[(first, 8), (last, 8)],
        default_quant_scheme=QuantScheme.post_training_tf_enhanced)
    adaround_seconds = time.perf_counter() - t1
    sim = QuantizationSimModel(ada_model, dummy, quant_scheme=QuantScheme.post_training_tf_enhanced,
                               default_param_bw=args.param_bw, default_output_bw=args.output_bw)
    sim.set_and_freeze_param_encodings(os.path.join(workdir, "adaround.encodings"))

    def calibrate(m: torch.nn.Module, _args: object) -> None:
        with torch.no_grad():
            for i in range(0, len(calib), 256):
                m(calib[i:i + 256])

    sim.compute_encodings(calibrate, None)
    total = time.perf_counter() - t0
    bits = {}
    for name, m in sim.model.named_modules():
        quantizers = getattr(m, "param_quantizers", None)
        if quantizers is not None and "weight" in quantizers and quantizers["weight"] is not None:
            bits[name] = int(getattr(quantizers["weight"], "bitwidth", 0))
    out = {"aimet_version": aimet_torch.__version__, "adaround_seconds": adaround_seconds,
           "total_seconds": total, "weight_bits": bits,
           "test_pred": predict(sim.model, torch.from_numpy(data["test"])),
           "val_pred": predict(sim.model, torch.from_numpy(data["val"])),
           "notes": "prepare_model + fold_all_batch_norms; AdaRound weights-only with "
                    "tf-enhanced ranges (AIMET default), first/last layer 8-bit; activations "
                    f"{args.output_bw}-bit tf-enhanced output quantizers (AIMET's placement)"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
