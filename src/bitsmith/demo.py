"""The embedded demo: train a small CNN on scikit-learn's bundled digits, then compare
FP32 with W8A8, W4A4, a hand-written mixed policy and ``bitsmith.autoquantize``'s result
(validation and test accuracy, size, BitOPs), choose by one stated rule on the validation
data, and write the run directory the HTML report is built from.

Data roles never overlap: the network trains on the train split (1,077 images), calibrates
on its first 256 images, every choice is made on the validation split (360) and the test
split (360) is only reported. Runs offline in about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch.utils.data import Subset

from bitsmith.atomic import atomic_write_text
from bitsmith.cost import estimate
from bitsmith.data import digits_splits, make_loader
from bitsmith.engine import evaluate, fit
from bitsmith.models import SmallCNN
from bitsmith.pareto import cheapest_within, pareto_front
from bitsmith.policy import LayerSpec, Policy, QSpec, build_policy
from bitsmith.progress import ProgressBar, stage
from bitsmith.quantize import collect_stats, prepare, quantize

TOLERANCE = 1.5  # points of validation top-1: 5.4 of the 360 validation images
CALIBRATION = 256


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table (accuracies in percent)."""

    name: str
    val_accuracy: float
    test_accuracy: float
    size_bytes: int
    compression: float
    bitops: int
    avg_weight_bits: float


@dataclass
class DemoRun:
    """The demo's table, the chosen row and the rule that chose it."""

    rows: list[DemoRow]
    chosen: str
    rule: str
    front: list[str]
    seconds: float


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
        "mixed W" + "/".join(_bits(mixed[n]) for n in layer_names): mixed,
    }


def _bits(spec: LayerSpec) -> str:
    return "f" if spec.weight is None else str(spec.weight.bits)


def run_demo(out_dir: str | Path | None = None, epochs: int = 30, seed: int = 0,
             tune_trials: int = 16, progress: bool = False) -> DemoRun:
    """Train, quantize, evaluate, choose; optionally write a run directory to ``out_dir``.

    ``out_dir`` receives ``results.json``, one ``policy_<name>.yaml`` per row and the
    ``bitsmith.run/1`` files the HTML report reads; with ``tune_trials > 0``
    :func:`bitsmith.autoquantize` runs (its own run directory: ``out_dir/tune``).
    ``progress``: a bar per epoch and a line per step (see :mod:`bitsmith.progress`).
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    splits = digits_splits(seed=seed)
    model = SmallCNN()
    with ProgressBar(f"train SmallCNN on {len(splits.train)} digits", epochs,
                     enabled=progress, unit="epochs") as bar:
        fit(model, make_loader(splits.train, batch_size=64, shuffle=True, seed=seed),
            epochs=epochs, lr=3e-3, weight_decay=1e-4,
            on_epoch=lambda e, loss: bar.update(e + 1, f"loss {loss:.3f}"))
    calibration = Subset(splits.train, range(CALIBRATION))
    val, test = make_loader(splits.val, batch_size=256), make_loader(splits.test, batch_size=256)
    with stage("calibrate and quantize FP32, W8A8, W4A4, mixed", progress):
        stats = collect_stats(model, make_loader(calibration, batch_size=128))  # reused by all
        _, table, _ = prepare(model, stats.example_inputs)
        policies = demo_policies(table.names)
        models = {name: quantize(model, policy, calibration=stats)
                  for name, policy in policies.items()}
    if tune_trials > 0 and out_dir is not None:
        from bitsmith.auto import autoquantize

        auto = autoquantize(model, calibration, splits.val, tolerance=TOLERANCE,
                            trials=tune_trials, out_dir=Path(out_dir) / "tune",
                            progress=progress)
        policies["autoquantize"], models["autoquantize"] = auto.policy, auto.model
    with stage("evaluate every policy on validation and test", progress):
        rows = [_row(name, models[name], policy, table, val, test)
                for name, policy in policies.items()]
    run = _choose(rows, time.perf_counter() - t0)
    if out_dir is not None:
        _write_run(Path(out_dir), table, policies, run, len(splits.val), len(splits.test))
    return run


def _row(name: str, qmodel: torch.nn.Module, policy: Policy, table: Any, val: Any,
         test: Any) -> DemoRow:
    cost = estimate(table, policy)
    return DemoRow(name, evaluate(qmodel, val).accuracy, evaluate(qmodel, test).accuracy,
                   cost.size_bytes, cost.compression, cost.bitops, cost.avg_weight_bits)


def _choose(rows: list[DemoRow], seconds: float) -> DemoRun:
    """The chosen row: the tuner's rule over every row, on the validation data."""
    sizes = [r.size_bytes for r in rows]
    vals = [r.val_accuracy for r in rows]
    pick = cheapest_within(sizes, vals, rows[0].val_accuracy - TOLERANCE)
    rule = (f"smallest size among the policies within {TOLERANCE:g} points of FP32 on the "
            "validation split (ties: the more accurate); a point of the validation Pareto "
            "front")
    return DemoRun(rows, rows[pick if pick is not None else 0].name, rule,
                   [rows[i].name for i in pareto_front(sizes, vals)], seconds)


def print_demo(run: DemoRun, console: Any) -> None:
    """The demo table (validation and test columns) and the rule that chose."""
    table = Table(title="bitsmith demo: SmallCNN on sklearn digits (validation 360, test 360 "
                        "images)")
    for col in ("policy", "val acc %", "test acc %", "size", "compression", "BitOPs",
                "avg w bits", ""):
        table.add_column(col, justify="left" if col in ("policy", "") else "right")
    for r in run.rows:
        mark = "chosen" if r.name == run.chosen else ("front" if r.name in run.front else "")
        table.add_row(r.name, f"{r.val_accuracy:.2f}", f"{r.test_accuracy:.2f}",
                      f"{r.size_bytes / 1024:.1f} KiB", f"{r.compression:.1f}x",
                      f"{r.bitops / 1e6:.1f} M", f"{r.avg_weight_bits:.2f}", mark)
    console.print(table)
    console.print(f"chosen: {run.chosen} - rule: {run.rule}; test accuracy is reported, never "
                  "chosen on", soft_wrap=True)


def _write_run(out: Path, table: Any, policies: dict[str, Policy], run: DemoRun,
               n_val: int, n_test: int) -> None:
    """``results.json``, ``policy_<slug>.yaml`` and the run directory of the report."""
    from bitsmith.rundir import RunWriter

    writer = RunWriter(out, model="SmallCNN", dataset="sklearn digits",
                       eval_set=f"validation split ({n_val} images)", producer="bitsmith demo")
    writer.write_layers(table)
    writer.set_fp32(accuracy=run.rows[0].val_accuracy)
    writer.set_test_set(f"test split ({n_test} images)", run.rows[0].test_accuracy)
    for row, (name, policy) in zip(run.rows, policies.items()):
        slug = name.split(" ")[0].lower()  # fp32, w8a8, w4a4, mixed, autoquantize
        policy.save(out / f"policy_{slug}.yaml")
        writer.add_trial(name, policy=policy, accuracy=row.val_accuracy,
                         test_accuracy=row.test_accuracy,
                         source="float" if name == "FP32" else "automatic"
                         if name == "autoquantize" else "hand-written")
    writer.choose(run.chosen, rule=run.rule)
    atomic_write_text(out / "results.json", json.dumps(
        {"rows": [asdict(row) for row in run.rows], "chosen": run.chosen, "rule": run.rule,
         "pareto_front": run.front, "layers": table.to_rows(), "validation_images": n_val,
         "test_images": n_test, "seconds": run.seconds}, indent=2))
