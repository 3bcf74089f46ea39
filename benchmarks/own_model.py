"""A user's own model through the command line (issue 14 acceptance).

The shipped CIFAR-10 ResNet-32 checkpoint is given as a *user* checkpoint file to a model
file bitsmith does not know (``benchmarks/user_model/resnet_cifar.py``, written as a user
would: plain PyTorch, nothing from bitsmith's registry), and the real ``bitsmith`` command
is run in subprocesses, exactly as a user types it:

1. ``bitsmith export --policy w8a8``: FP32 and int8 (per-channel int8 weights, 8-bit
   activations) ONNX models, checked against the PyTorch simulation;
2. ``bitsmith analyze --avg-bits 4``: sensitivities and a ~4-bit policy (uniform W4A8 or an
   integer-program allocation with the same size, whichever is more accurate on validation;
   the first and last layer fixed at W8A8, analyze's default ``--first-last int8``);
3. ``bitsmith export --policy <analyze>/policy.yaml``: that policy deployed;
4. for comparison, ``bitsmith export`` of a hand-written uniform W4A8 policy over *every*
   layer (what ``--first-last same``, analyze's previous default, chose);
5. ``bitsmith report`` of the analyze run;
6. what a user adds when ~4 bits lose too much (skip with ``--no-extras``): ``bitsmith
   export`` of analyze's policy with ``bias_correction: true`` and with ``rounding:
   adaround`` (learned rounding, ``docs/reconstruction.md``);
7. optionally (``--tune-trials N``): ``bitsmith tune`` (mixed-precision space, smallest size
   within 1 point on validation, warm-started from the analyze policy), ``bitsmith export``
   of its policy and ``bitsmith report`` of its run.

Every exported ONNX model (``fp32.onnx``, ``quantized.onnx``) is then run in ONNX Runtime on
the 1,000 lossless test images and on the 5,000 JPEG validation images (the honest
validation split: the float model has not memorised these JPEG copies; the first 1,000 /
2,000 of them are what analyze / tune chose on; images 2,000.. are reported apart as
"unseen"). Wall time of every command is recorded.

Acceptance: int8 within 0.3 points of FP32 and ~4-bit within 1 point, on the test images.

Run (timed, on a shared machine): ``flock /tmp/bitsmith-bench.lock .venv/bin/python -m
benchmarks.own_model``; ``--quick`` runs tiny settings to check the plumbing (not recorded);
``--rescore`` scores the run folders of the last run again (``runs/own_model/steps.json``).
Writes results/own_model.json and results/own_model.md; the run folders go to
runs/own_model/ (recreated each time).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.atomic import atomic_write_text

try:
    from benchmarks.common import write_result
except ImportError:  # run as a script from benchmarks/
    from common import write_result

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = "benchmarks/user_model/resnet_cifar.py:build"
CHECKPOINT = "../shared/data/models/akamaster_resnet_cifar10/resnet32-d509ac18.th"
OUT = Path("runs/own_model")
ORT_THREADS = 2
INT8_TOLERANCE, W4_TOLERANCE = 0.3, 1.0
ADAROUND_ITERATIONS = 1000   # analyze --rounding-iterations' default
EXTRAS = Path("runs/own_model_extras")
UNSEEN_FROM = 2000   # analyze chooses on JPEG validation images 0..999, tune on 0..1,999


def bitsmith_command() -> str:
    """The ``bitsmith`` console script of this interpreter's environment (as on PATH)."""
    beside = Path(sys.executable).parent / "bitsmith"
    return str(beside) if beside.is_file() else (shutil.which("bitsmith") or "bitsmith")


def user_args() -> list[str]:
    return ["--model", MODEL_FILE, "--checkpoint", CHECKPOINT, "--data", "cifar10"]


def run_step(name: str, args: list[str], logs: Path, ok: tuple[int, ...] = (0,),
             threads: int | None = None) -> dict[str, Any]:
    """Run ``bitsmith ARGS`` from the repository root; its output goes to ``logs/NAME.log``.

    Returns the step record: command line, exit code, wall seconds, load averages. An exit
    code outside ``ok`` ends the benchmark (tune may exit 3: nothing met the tolerance, the
    closest policy is still written).
    """
    argv = [bitsmith_command(), *args]
    shown = "bitsmith " + shlex.join(args)
    print(f"[{time.strftime('%H:%M:%S')}] {shown}", flush=True)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False, env=env)
    wall = time.perf_counter() - t0
    tail = (logs / f"{name}.log").read_text().splitlines()[-8:]
    print(f"    exit {proc.returncode} in {wall:.1f} s", flush=True)
    if proc.returncode not in ok:
        raise SystemExit(f"step {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {"step": name, "command": shown, "exit_code": proc.returncode, "threads": threads,
            "wall_seconds": wall, "load_before": load_before,
            "load_after": os.getloadavg()[0], "output_tail": tail}


def onnx_correct(path: Path, splits, role: str) -> np.ndarray:
    """Per-example top-1 hits (bool, split order) of the ONNX model ``path`` in ONNX Runtime
    on the labelled split ``role``."""
    from bitsmith.export.ort import make_session, run

    session = make_session(path, ORT_THREADS)
    hits = [np.argmax(run(session, [x.numpy()])[0], 1) == y.numpy()
            for x, y in splits.loader(role, batch_size=250)]
    return np.concatenate(hits)


def accuracies(path: Path, splits) -> dict[str, float]:
    """Top-1 % on the test images, on the JPEG validation images, and on the part of those
    that no producer chose on (``UNSEEN_FROM`` onwards)."""
    test = onnx_correct(path, splits, "test")
    val = onnx_correct(path, splits, "validation")
    return {"test_accuracy_onnx": 100.0 * float(test.mean()), "val_jpeg_accuracy_onnx":
            100.0 * float(val.mean()),
            "val_jpeg_unseen_accuracy_onnx": 100.0 * float(val[UNSEEN_FROM:].mean())}


def exported_row(label: str, folder: Path, splits, policy_from: str) -> dict[str, Any]:
    """Accuracy of an export folder's quantized ONNX model on test and JPEG validation,
    next to what ``bitsmith export`` itself reported."""
    summary = json.loads((folder / "summary.json").read_text())
    t0 = time.perf_counter()
    scores = accuracies(folder / "quantized.onnx", splits)
    sizes = summary["sizes"]
    return {"config": label, "policy": policy_from, "export_dir": str(folder.relative_to(ROOT)),
            "avg_weight_bits": summary["avg_weight_bits"],
            "packed_bytes": sizes["packed"], "quantized_onnx_bytes": sizes["quantized_onnx"],
            "compression_vs_fp32_state_dict": sizes["fp32_state_dict"] / sizes["packed"],
            **scores,
            "export_reported": summary["accuracy"],
            "top1_agreement_onnx_vs_simulation": summary["agreement"]["top1_agreement"],
            "latency_ms": {b: {"fp32": t["fp32"]["median_ms"],
                               "quantized": t["quantized"]["median_ms"],
                               "speedup": t["speedup"]}
                           for b, t in summary["latency"].items()},
            "eval_seconds": time.perf_counter() - t0}


def run_summary(folder: Path) -> dict[str, Any]:
    """The chosen policy's numbers as the producer recorded them in its run directory."""
    run = json.loads((folder / "run.json").read_text())
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()
              if line.strip()]
    chosen = next((t for t in trials if t.get("name") == run.get("chosen")), {})
    summary = folder / "summary.json"
    feasible = json.loads(summary.read_text()).get("feasible") if summary.is_file() else None
    return {"feasible": feasible,"chosen": run.get("chosen"), "rule": run.get("rule"),
            "eval_set": run.get("eval_set"), "test_set": run.get("test_set"),
            "fp32_validation": (run.get("fp32") or {}).get("accuracy"),
            "chosen_validation": chosen.get("accuracy"),
            "chosen_avg_weight_bits": chosen.get("avg_weight_bits"),
            "chosen_compression": chosen.get("compression"),
            "test": run.get("test"), "guard_fired": (run.get("guard") or {}).get("fired"),
            "trials": len(trials)}


def with_options(analyze_policy: Path, path: Path, **options: Any) -> Path:
    """Write, to ``path``, the policy ``analyze_policy`` with model-wide options changed
    (``rounding=``, ``bias_correction=``): what a user adds to analyze's choice."""
    from bitsmith import Policy

    Policy.load(ROOT / analyze_policy).with_options(**options).save(ROOT / path)
    return path


def every_layer_w4(analyze_policy: Path, path: Path) -> Path:
    """Write, to ``path``, uniform W4A8 (per-channel symmetric min/max weights, asymmetric
    8-bit activations) over every layer named in ``analyze_policy``: analyze's uniform
    candidate with the first and last layer at 4 bits too."""
    from bitsmith import Policy, QSpec

    names = list(Policy.load(ROOT / analyze_policy))
    Policy.uniform(names, QSpec("uniform_symmetric", 4, "channel"),
                   QSpec("uniform_asymmetric", 8)).save(ROOT / path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings to check the plumbing; nothing is recorded")
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="also run `bitsmith tune` with this many trials, warm-started "
                             "from the analyze policy, and export its choice (0: skip; "
                             "each trial costs ~30 s here)")
    parser.add_argument("--methods", default="fisher",
                        help="analyze --methods (the default 'measured,hessian,fisher' "
                             "costs ~15 s per (layer, bits) pair here: 192 pairs)")
    parser.add_argument("--extras", action="store_true",
                        help="run only the two untimed exports of uniform W4A8 (first/last "
                             "W8A8) with bias correction and with AdaRound, 1 torch thread, "
                             "into runs/own_model_extras/ (no lock needed; the main run's "
                             "results include them when present)")
    parser.add_argument("--rescore", action="store_true",
                        help="do not run the commands again: score the run folders of the "
                             "last run (runs/own_model/steps.json) and write the results")
    opts = parser.parse_args()
    out = ROOT / OUT
    if opts.extras:
        run_extras(ROOT / EXTRAS, opts.quick)
        return
    if opts.rescore:
        record = json.loads((out / "steps.json").read_text())
    else:
        record = run_commands(out, opts.quick, 3 if opts.quick else opts.tune_trials,
                              opts.methods)
    score(out, record, opts.quick)


def run_commands(out: Path, quick: bool, trials: int, methods: str) -> dict[str, Any]:
    """Run every ``bitsmith`` command (fresh run folders under ``out``); returns the steps,
    total wall time and load averages (also written to ``out/steps.json``)."""
    shutil.rmtree(out, ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(parents=True)
    few = ["--runs", "5", "--runs-large", "3"]
    timing = few if quick else ["--runs", "100", "--runs-large", "20"]
    short_timing = few if quick else ["--runs", "30", "--runs-large", "5"]
    quick_data = ["--validation-size", "200"] if quick else []
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    steps = [
        run_step("export_int8", ["export", *user_args(), "--policy", "w8a8",
                                 "--out", str(OUT / "int8"), *timing], logs),
        run_step("analyze", ["analyze", *user_args(), *quick_data, "--avg-bits", "4",
                             "--methods", methods, "--out", str(OUT / "analyze")], logs),
        run_step("export_w4", ["export", *user_args(), "--policy",
                               str(OUT / "analyze" / "policy.yaml"), "--out", str(OUT / "w4"),
                               *timing], logs),
        run_step("export_w4_all", ["export", *user_args(), "--policy",
                                   str(every_layer_w4(OUT / "analyze" / "policy.yaml",
                                                      OUT / "w4_all_layers.yaml")),
                                   "--out", str(OUT / "w4_all"), *short_timing], logs),
        run_step("report_analyze", ["report", str(OUT / "analyze")], logs),
    ]
    if trials:
        steps += [
            run_step("tune", ["tune", *user_args(), *quick_data, "--tolerance", "1",
                              "--n-trials", str(trials), "--init-policy",
                              str(OUT / "analyze" / "policy.yaml"), "--out", str(OUT / "tune")],
                     logs, ok=(0, 3)),
            run_step("export_tuned", ["export", *user_args(), "--policy",
                                      str(OUT / "tune" / "policy.yaml"),
                                      "--out", str(OUT / "tuned"), *timing], logs),
            run_step("report_tune", ["report", str(OUT / "tune")], logs),
        ]
    record = {"steps": steps, "total_wall_seconds": time.perf_counter() - t_start,
              "load_average": [load_start, os.getloadavg()[0]], "tune_trials": trials,
              "analyze_methods": methods, "torch_threads": torch.get_num_threads()}
    atomic_write_text(out / "steps.json", json.dumps(record, indent=2))
    return record


def edge8_w4(path: Path, **options: Any) -> Path:
    """Write, to ``path``, uniform W4A8 with the first and last layer at W8A8 (analyze's
    uniform candidate at ``--avg-bits 4``) with model-wide ``options``."""
    import bitsmith
    from bitsmith import Policy, QSpec
    from bitsmith.inputs.model import resolve_model
    from bitsmith.policy import INT8

    model = resolve_model(MODEL_FILE, checkpoint=ROOT / CHECKPOINT)
    first, *middle, last = bitsmith.prepare(model, torch.zeros(1, 3, 32, 32))[1].names
    Policy({first: INT8, last: INT8,
            **Policy.uniform(middle, QSpec("uniform_symmetric", 4, "channel"),
                             QSpec("uniform_asymmetric", 8))}, **options).save(ROOT / path)
    return path


def run_extras(out: Path, quick: bool) -> None:
    """What a user adds when ~4 bits lose too much: ``bitsmith export`` of uniform W4A8
    (first/last W8A8) with ``bias_correction: true`` and with ``rounding: adaround``.
    Untimed (1 torch thread, outside the lock); records to ``out/steps.json``."""
    from bitsmith.policy import Rounding

    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    rel = out.relative_to(ROOT)
    few = ["--runs", "5", "--runs-large", "3"] if quick else ["--runs", "30",
                                                               "--runs-large", "5"]
    rounding = Rounding("adaround", iterations=2 if quick else ADAROUND_ITERATIONS)
    steps = [run_step(name, ["export", *user_args(), "--policy",
                             str(edge8_w4(rel / f"{name}.yaml", **options)),
                             "--out", str(rel / name), *few], out / "logs", threads=1)
             for name, options in (("w4_bc", {"bias_correction": True}),
                                   ("w4_adaround", {"rounding": rounding}))]
    atomic_write_text(out / "steps.json", json.dumps({"steps": steps, "locked": False},
                                                     indent=2))


def score(out: Path, record: dict[str, Any], quick: bool) -> None:
    """Score the exported models of the run in ``out``; write the results (print them
    when ``quick``)."""
    from bitsmith.inputs import resolve_data

    steps, trials, total = record["steps"], record["tune_trials"], record["total_wall_seconds"]
    load_start, load_end = record["load_average"]

    splits = resolve_data("cifar10")
    fp32 = accuracies(out / "int8" / "fp32.onnx", splits)
    rows = [
        {"config": "FP32", "policy": "-", **fp32,
         "export_reported": {"fp32": json.loads(
             (out / "int8" / "summary.json").read_text())["accuracy"]["fp32"]}},
        exported_row("int8 (export --policy w8a8)", out / "int8", splits, "preset w8a8"),
        exported_row("~4-bit (analyze --avg-bits 4, chosen)", out / "w4", splits,
                     str(OUT / "analyze" / "policy.yaml")),
        exported_row("uniform W4A8 incl. first/last (--first-last same, for comparison)",
                     out / "w4_all", splits, str(OUT / "w4_all_layers.yaml")),
    ]
    extras = ROOT / EXTRAS
    extras_layers_are_chosen = None
    if (extras / "steps.json").is_file():
        rows += [exported_row("uniform W4A8 (first/last W8A8) + bias correction", extras /
                              "w4_bc", splits, str(EXTRAS / "w4_bc.yaml")),
                 exported_row(f"uniform W4A8 (first/last W8A8) + AdaRound "
                              f"({ADAROUND_ITERATIONS} iterations)", extras / "w4_adaround",
                              splits, str(EXTRAS / "w4_adaround.yaml"))]
        from bitsmith import Policy

        extras_layers_are_chosen = dict(Policy.load(extras / "w4_bc.yaml").items()) == dict(
            Policy.load(out / "analyze" / "policy.yaml").items())
        steps = steps + [{**st, "untimed": True} for st in
                         json.loads((extras / "steps.json").read_text())["steps"]]
    if trials:
        rows.append(exported_row("tuned mixed (tune --tolerance 1, chosen)", out / "tuned",
                                 splits, str(OUT / "tune" / "policy.yaml")))
    for r in rows:
        r["test_drop"] = fp32["test_accuracy_onnx"] - r["test_accuracy_onnx"]
        r["val_jpeg_drop"] = fp32["val_jpeg_accuracy_onnx"] - r["val_jpeg_accuracy_onnx"]
        r["val_jpeg_unseen_drop"] = (fp32["val_jpeg_unseen_accuracy_onnx"]
                                     - r["val_jpeg_unseen_accuracy_onnx"])
    int8_ok = rows[1]["test_drop"] <= INT8_TOLERANCE
    w4_ok = rows[2]["test_drop"] <= W4_TOLERANCE
    int8_jpeg_ok = rows[1]["val_jpeg_drop"] <= INT8_TOLERANCE
    w4_jpeg_ok = rows[2]["val_jpeg_drop"] <= W4_TOLERANCE
    producers = {"analyze": run_summary(out / "analyze")}
    if trials:
        producers["tune"] = run_summary(out / "tune")
    n_val = splits.info["validation"].size
    lines = [
        f"The shipped ResNet-32 checkpoint (`{CHECKPOINT}`) given as a user's checkpoint to "
        f"a user's model file (`{MODEL_FILE}`, plain PyTorch, not bitsmith's registry), "
        "through the `bitsmith` command in subprocesses, `--data cifar10`. Accuracies: the "
        "exported ONNX models run in ONNX Runtime on the 1,000 lossless test images (test) "
        f"and on the {n_val:,} JPEG validation images (the honest validation split; analyze "
        "chose on the first 1,000 of them" + (", tune on the first 2,000" if trials else "")
        + f"; 'unseen' = images {UNSEEN_FROM:,}..{n_val - 1:,}, which no producer saw).",
        f"Machine: 2 shared cores; 1-min load average {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end; each command ran with torch's default "
        f"{record['torch_threads']} threads; ONNX Runtime evaluation {ORT_THREADS} threads. "
        f"All commands together: {total:.0f} s wall.",
        "",
        f"Acceptance (test images): int8 within {INT8_TOLERANCE} points of FP32: "
        f"{'MET' if int8_ok else 'NOT MET'} ({rows[1]['test_drop']:+.2f}); ~4-bit within "
        f"{W4_TOLERANCE:g} point: {'MET' if w4_ok else 'NOT MET'} ({rows[2]['test_drop']:+.2f}). "
        f"The same bars on the {n_val:,} JPEG validation images (the honest second set; "
        "the producers chose on a prefix of them): int8 "
        f"{'MET' if int8_jpeg_ok else 'NOT MET'} ({rows[1]['val_jpeg_drop']:+.2f}), ~4-bit "
        f"{'MET' if w4_jpeg_ok else 'NOT MET'} ({rows[2]['val_jpeg_drop']:+.2f}).",
        "",
        "| configuration | avg w bits | packed KiB | vs FP32 | test % | test drop | "
        "JPEG val % | JPEG val drop | unseen JPEG drop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['config']} | " + (
            f"{r['avg_weight_bits']:.2f} | {r['packed_bytes'] / 1024:.1f} | "
            f"{r['compression_vs_fp32_state_dict']:.2f}x | " if "packed_bytes" in r
            else "32 | - | 1.00x | ")
          + f"{r['test_accuracy_onnx']:.2f} | {r['test_drop']:+.2f} | "
            f"{r['val_jpeg_accuracy_onnx']:.2f} | {r['val_jpeg_drop']:+.2f} | "
            f"{r['val_jpeg_unseen_drop']:+.2f} |" for r in rows],
        *([] if extras_layers_are_chosen is None else [
            "", "The two bias-correction / AdaRound rows: hand-written uniform W4A8 with the "
            "first and last layer at W8A8 plus that model-wide option, exported untimed (1 "
            "thread, outside the lock); its layers are "
            + ("exactly" if extras_layers_are_chosen else "NOT")
            + " those of analyze's choice."]),
        "",
        "What the producers chose (their own records; validation = the JPEG prefix they "
        "were given):",
        "",
        *[f"- `{name}`: chosen {p['chosen']!r} by the rule \"{p['rule']}\"; validation "
          f"FP32 {p['fp32_validation']:.2f}% vs chosen {p['chosen_validation']:.2f}%; "
          f"test (PyTorch simulation) FP32 {p['test']['fp32']:.2f}% vs chosen "
          f"{p['test']['chosen']:.2f}%; guard fired: {p['guard_fired']}; {p['trials']} "
          f"{'trials' if name == 'tune' else 'policies'} scored."
          for name, p in producers.items()],
        "",
        "| step | command | wall s | load before -> after |",
        "|---|---|---:|---|",
        *[f"| {s['step']}{' (untimed: 1 thread, outside the lock)' if s.get('untimed') else ''}"
          f" | `{s['command']}` | {s['wall_seconds']:.1f} | "
          f"{s['load_before']:.1f} -> {s['load_after']:.1f} |" for s in steps],
        "",
        "Latency from each export (ONNX Runtime, 2 threads, interleaved medians; the machine "
        "was shared, so ratios only): " + "; ".join(
            f"{r['config']}: " + ", ".join(f"batch {b} {v['speedup']:.2f}x"
                                           for b, v in r["latency_ms"].items())
            for r in rows if "latency_ms" in r) + ".",
    ]
    if quick:
        print(json.dumps({"rows": rows, "producers": producers}, indent=2, default=str))
        print("\n".join(lines))
        return
    write_result("own_model", {
        "model_file": MODEL_FILE, "checkpoint": CHECKPOINT, "data": "cifar10",
        "val_jpeg_images": n_val, "test_images": splits.info["test"].size,
        "rows": rows, "steps": steps, "producers": producers,
        "extras_layers_equal_analyze_choice": extras_layers_are_chosen,
        "acceptance": {"int8_within_0.3": int8_ok, "w4_within_1": w4_ok,
                       "val_jpeg": {"int8_within_0.3": int8_jpeg_ok,
                                    "w4_within_1": w4_jpeg_ok}},
        **{k: v for k, v in record.items() if k != "steps"}, "ort_threads": ORT_THREADS,
    }, lines)


if __name__ == "__main__":
    main()
