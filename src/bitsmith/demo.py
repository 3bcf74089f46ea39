"""The embedded demo: train a small CNN on scikit-learn's bundled digits, then compare
FP32 with W8A8, W4A4, a hand-written mixed policy and an auto-tuned one (accuracy,
size, BitOPs), and write the run directory the HTML report is built from.

Runs offline in well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bitsmith.cost import estimate
from bitsmith.data import digits_splits, make_loader
from bitsmith.engine import evaluate, fit
from bitsmith.models import SmallCNN
from bitsmith.policy import LayerSpec, Policy, QSpec, build_policy
from bitsmith.quantize import collect_stats, prepare, quantize


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table."""

    name: str
    accuracy: float
    size_bytes: int
    compression: float
    bitops: int
    avg_weight_bits: float


def demo_policies(layer_names: list[str]) -> dict[str, Policy]:
    """FP32, W8A8, W4A4 and one hand-written mixed policy for the digits CNN."""
    w8 = QSpec("uniform_symmetric", 8, "channel")
    a8 = QSpec("uniform_asymmetric", 8)
    w4 = QSpec("uniform_symmetric", 4, "channel", observer="mse")
    a4 = QSpec("uniform_asymmetric", 4, observer="mse")
    mixed = build_policy(layer_names, QSpec("uniform_symmetric", 3, "channel", observer="mse"),
                         QSpec("uniform_asymmetric", 6, observer="mse"), first_last="int8")
    mixed = mixed.with_layers({layer_names[1]: LayerSpec(w4, a8)})
    return {
        "FP32": Policy({}),
        "W8A8": Policy.uniform(layer_names, w8, a8),
        "W4A4": Policy.uniform(layer_names, w4, a4),
        "mixed W" + "/".join(str(mixed[n].weight.bits) for n in layer_names): mixed,
    }


def run_demo(out_dir: str | Path | None = None, epochs: int = 30, seed: int = 0,
             log=print, tune_trials: int = 16) -> list[DemoRow]:
    """Train, quantize, evaluate; optionally write a run directory to ``out_dir``.

    ``out_dir`` receives ``results.json``, one ``policy_<name>.yaml`` per row and the
    ``bitsmith.run/1`` files the HTML report reads; with ``tune_trials > 0`` a short
    auto-tune (XGBoost cost-model strategy) also runs and writes to ``out_dir/tune``.
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    splits = digits_splits(seed=seed)
    train = make_loader(splits.train, batch_size=64, shuffle=True, seed=seed)
    test = make_loader(splits.test, batch_size=256)
    calib = make_loader(splits.val, batch_size=128)
    model = SmallCNN()
    fit(model, train, epochs=epochs, lr=3e-3, weight_decay=1e-4)
    log(f"trained SmallCNN on {len(splits.train)} digits in {time.perf_counter() - t0:.1f} s")

    stats = collect_stats(model, calib)  # one pass, reused by every policy
    _, table, _ = prepare(model, stats.example_inputs)
    rows = []
    policies = demo_policies(table.names)
    for name, policy in policies.items():
        qmodel = quantize(model, policy, calibration=stats)
        acc = evaluate(qmodel, test).accuracy
        cost = estimate(table, policy)
        rows.append(DemoRow(name, acc, cost.size_bytes, cost.compression, cost.bitops,
                            cost.avg_weight_bits))
    if out_dir is not None and tune_trials > 0:
        from bitsmith.tune.demo import run_demo_tune

        tune_dir = Path(out_dir) / "tune"
        # 0.5 points on the 360 validation images: that split is small, so the tolerance
        # keeps a margin for the selection's optimism on unseen (test) images.
        run_demo_tune(model, splits, tune_dir, n_trials=tune_trials, tolerance=0.5, seed=seed,
                      log=log)
        best = tune_dir / "best_policy.yaml"
        if best.is_file():  # the smallest policy within tolerance on the val split
            policy = Policy.load(best)
            cost = estimate(table, policy)
            acc = evaluate(quantize(model, policy, calibration=stats), test).accuracy
            policies["auto-tuned"] = policy
            rows.append(DemoRow("auto-tuned", acc, cost.size_bytes, cost.compression,
                                cost.bitops, cost.avg_weight_bits))
    if out_dir is not None:
        _write_run(Path(out_dir), table, policies, rows, len(splits.test),
                   time.perf_counter() - t0)
    return rows


def _write_run(out: Path, table, policies: dict[str, Policy], rows: list[DemoRow],
               n_test: int, seconds: float) -> None:
    """``results.json``, ``policy_<slug>.yaml`` and the run directory of the report."""
    from bitsmith.rundir import RunWriter

    run = RunWriter(out, model="SmallCNN", dataset="sklearn digits",
                    eval_set=f"test split ({n_test} images)", producer="bitsmith demo")
    run.write_layers(table)
    run.set_fp32(accuracy=rows[0].accuracy)
    for row, (name, policy) in zip(rows, policies.items()):
        slug = name.split(" ")[0].lower()  # fp32, w8a8, w4a4, mixed, auto-tuned
        policy.save(out / f"policy_{slug}.yaml")
        run.add_trial(name, policy=policy, accuracy=row.accuracy,
                      source="float" if name == "FP32" else "demo")
    run.choose(rows[-1].name)
    (out / "results.json").write_text(json.dumps(
        {"rows": [row.__dict__ for row in rows], "layers": table.to_rows(),
         "test_images": n_test, "seconds": seconds}, indent=2))
