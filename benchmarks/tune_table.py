"""Evaluate every configuration of a finite Quantune-style space once and cache it as JSON.

The table is what ``benchmarks/tune_efficiency.py`` replays every strategy x seed
against (cheap and exact). Space: Quantune's knobs (4 schemes, max/KL/percentile/MSE
activation clipping, per-tensor/per-channel weights, 3 calibration sizes, none/first/
first+last layers in float) at W4A4, 288 configurations. Accuracy on a validation split
(CIFAR-10: the first ``--val`` JPEG validation images; digits: the val split), never the
test images.

Run: python benchmarks/tune_table.py --model digits   (and --model digits-wide)
"""

from __future__ import annotations

import argparse
import time

import torch

from bitsmith.data import cifar10_protocol, digits_splits, make_loader
from bitsmith.engine import fit
from bitsmith.models import SmallCNN, load_pretrained_cifar_resnet
from bitsmith.tune.evaluator import TorchEvaluator
from bitsmith.tune.space import TuneSpace

try:
    from benchmarks.common import write_result
except ImportError:  # run as a script from benchmarks/
    from common import write_result

EFFICIENCY_SPACE = TuneSpace(weight_bits=(4,), act_bits=(4,))
# the digits calibration split has 1,077 images: calibration sizes 1 / 100 / 1000
DIGITS_SPACE = TuneSpace(weight_bits=(4,), act_bits=(4,), calib_size=(1, 100, 1000))


def problem(name: str, n_val: int) -> tuple:
    """``(model, calibration inputs, (val x, val y))`` of a named benchmark model.

    ``resnet20`` / ``resnet32``: pretrained CIFAR-10 ResNets, the first ``n_val`` JPEG
    validation images. ``digits`` / ``digits-wide``: SmallCNN (width 16, seed 0 / width
    24, seed 1) trained here on the sklearn digits; validation = the val split.
    """
    if name.startswith("resnet"):
        proto = cifar10_protocol()
        return (load_pretrained_cifar_resnet(int(name[6:])), proto.calibration,
                proto.val.tensors(range(n_val)))
    seed, width = (0, 16) if name == "digits" else (1, 24)
    torch.manual_seed(seed)
    splits = digits_splits(seed=0)
    model = SmallCNN(width=width)
    fit(model, make_loader(splits.train, batch_size=64, shuffle=True, seed=seed), epochs=30,
        lr=3e-3, weight_decay=1e-4)
    return model, splits.train, splits.val


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20",
                    help="resnet20, resnet32, digits or digits-wide")
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sample", type=int, default=0,
                    help="evaluate only this many random configurations (transfer sources)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, calib, val = problem(args.model, args.val)
    t0 = time.perf_counter()
    space = EFFICIENCY_SPACE if args.model.startswith("resnet") else DIGITS_SPACE
    ev = TorchEvaluator(model, calib, val, space, stages=(1.0,))
    configs = list(space.grid(ev.layer_names))
    if args.sample:
        keep = torch.randperm(len(configs), generator=torch.Generator().manual_seed(0))
        configs = [configs[i] for i in sorted(keep[: args.sample].tolist())]
    rows = []
    for config in configs:
        m = ev.evaluate(config)
        rows.append({"config": config, "accuracy": m.accuracy, "drop": m.drop,
                     "size_bytes": m.size_bytes, "bitops": m.bitops, "seconds": m.seconds})
    total = time.perf_counter() - t0
    best = max(rows, key=lambda r: r["accuracy"])
    name = f"tune_table_{args.model.replace('-', '_')}"
    write_result(name, {
        "model": args.model, "val_images": len(val[1]) if isinstance(val, tuple) else len(val),
        "fp32_accuracy": ev.fp32_accuracy,
        "space": space.to_dict(), "descriptors": ev.descriptors,
        "layer_names": ev.layer_names, "weight_params": ev.weight_params,
        "seconds": total, "rows": rows,
    }, [f"{args.model}: {len(rows)} configurations evaluated on the validation set "
        f"in {total:.0f} s; FP32 {ev.fp32_accuracy:.2f}%, best {best['accuracy']:.2f}% "
        f"({best['config']}), worst {min(r['accuracy'] for r in rows):.2f}%."])


if __name__ == "__main__":
    main()
