"""FP32 reference accuracies of the pretrained akamaster ResNet-20/32 on the CIFAR-10 protocol.

Evaluates on the report set (1,000 lossless test images; expected 91.50% / 92.80% per
``shared/data/SOURCES.md``) and on the search-time validation split of
:func:`bitsmith.data.cifar10_protocol` (JPEG training images; ResNet-20 about 86.7%), and
writes ``benchmarks/results/fp32_reference.json``.

Usage: ``python benchmarks/fp32_reference.py [--n-val 5000] [--seed 0] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bitsmith.data import ArrayImageDataset, cifar10_protocol
from bitsmith.models import load_pretrained_cifar_resnet

EXPECTED_TEST = {20: 91.50, 32: 92.80}


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: ArrayImageDataset, batch_size: int = 500
             ) -> dict[str, float | int]:
    """Top-1 accuracy (%) of ``model`` on ``ds`` (no augmentation), with counts and seconds."""
    model.eval()
    correct, t0 = 0, time.perf_counter()
    for i in range(0, len(ds), batch_size):
        x, y = ds.tensors(range(i, min(i + batch_size, len(ds))))
        correct += int((model(x).argmax(1) == y).sum())
    secs = time.perf_counter() - t0
    return {"accuracy": 100.0 * correct / len(ds), "correct": correct, "n": len(ds),
            "seconds": round(secs, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-val", type=int, default=5000, help="validation split size")
    ap.add_argument("--seed", type=int, default=0, help="validation split seed")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "fp32_reference.json")
    args = ap.parse_args()

    t_start = time.perf_counter()
    proto = cifar10_protocol(n_val=args.n_val, seed=args.seed)
    splits = {"test": proto.test, "val": proto.val}
    results: dict[str, object] = {}
    for depth in (20, 32):
        model = load_pretrained_cifar_resnet(depth)
        res = {name: evaluate(model, ds) for name, ds in splits.items()}
        res["test"]["expected_accuracy"] = EXPECTED_TEST[depth]
        res["test"]["matches_expected"] = abs(res["test"]["accuracy"] - EXPECTED_TEST[depth]) < 1e-6
        res["params"] = sum(p.numel() for p in model.parameters())
        results[f"resnet{depth}"] = res

    payload = {
        "benchmark": "fp32_reference",
        "device": "cpu",
        "dtype": "float32",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "protocol": {"seed": args.seed, "splits": proto.describe()},
        "splits_evaluated": {"test": "cifar10_test_subset (official test images 0..999, lossless)",
                             "val": f"cifar10_protocol(n_val={args.n_val}, seed={args.seed}).val "
                                    "(JPEG-q75 training images, stratified)"},
        "results": results,
        "total_seconds": round(time.perf_counter() - t_start, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")

    print(f"FP32 reference (torch {torch.__version__}, CPU, {torch.get_num_threads()} threads)")
    for name, res in results.items():
        t, v = res["test"], res["val"]  # type: ignore[index]
        flag = "ok" if t["matches_expected"] else f"EXPECTED {t['expected_accuracy']:.2f}"
        print(f"  {name}: test {t['accuracy']:.2f}% ({t['correct']}/{t['n']}, {flag})  "
              f"val {v['accuracy']:.2f}% ({v['correct']}/{v['n']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
