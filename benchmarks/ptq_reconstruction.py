"""Benchmark: reconstruction-based PTQ (AdaRound, BRECQ, QDrop) on the CIFAR ResNets (issue 15).

Protocol (shared/data/SOURCES.md): pretrained ResNet-20 / ResNet-32; calibration = 1,024
lossless training images (stratified, no labels used); accuracy on the 1,000 lossless test
images *and* on the 5,000-image JPEG validation split (drop against FP32 on each); first
and last layer W8A8 in every policy. Paired comparisons with the exact McNemar test
against round-to-nearest (RTN) and RTN + bias correction (BC) of the same configuration,
in the same run.

Parts:
  table  uniform W8A8 / W4A8 / W3A8 / W2A8 / W4A4 x {RTN, RTN+BC, adaround, brecq, qdrop}
         (brecq / qdrop learn activation steps when activations are below 8 bits);
  mixed  ILP allocations (measured-KL sensitivities on 1,000 JPEG validation images,
         scipy MILP) at average weight bits 4 .. 1.5: without reconstruction (RTN
         sensitivities, binary / ternary among the candidates) and with it (sensitivities
         of each layer reconstructed alone, grid schemes only, the allocated policy then
         reconstructed with qdrop);
  aimet  AIMET's AdaRound (aimet-torch 2.42.0 in its own venv, set up by this script,
         never a bitsmith dependency; CPU) with the same calibration images, iterations
         and first/last 8-bit, see benchmarks/aimet_adaround.py.
  timing wall time under /tmp/bitsmith-bench.lock, held per group: bitsmith's
         W3A8 / W4A8 AdaRound interleaved with AIMET's on the same configuration, then the
         W4A4 BRECQ and QDrop reconstructions.
  export packed artifact (reloaded, compared bit for bit) and ONNX QDQ export (ONNX Runtime
         vs the simulation) of W4A8 RTN and AdaRound; AdaRound's integer codes are read
         back from the cache the timing part wrote.

The accuracy parts (table, mixed, aimet) do not take the lock: their results do not depend
on the load (reconstruction is deterministic for a seed and thread count), and their wall
times are recorded as indicative only (with the load average). The timing part reports the
wall times the acceptance asks about. Every row is appended to
runs/ptq_reconstruction/rows.jsonl as soon as it is measured, so a killed run resumes
(finished rows are skipped; the mixed part also reuses the unit cache in
runs/ptq_reconstruction/cache); rows record os.getloadavg() and the torch thread count.

Usage:  python -m benchmarks.ptq_reconstruction --parts table --models 20 32
        python -m benchmarks.ptq_reconstruction --summarize       # JSON + Markdown only
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting are ruinous on a shared, oversubscribed CPU (one
# reconstruction step measured 6x slower with 2 spinning threads than with 1 thread under
# load, and about 2x faster than 1 thread with passive waiting); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import correct_string, mcnemar_counts, write_result

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / "runs" / "ptq_reconstruction"  # rows.jsonl, the unit cache, AIMET's data
LOCK = "/tmp/bitsmith-bench.lock"
CONFIGS = {"W8A8": (8, 8), "W4A8": (4, 8), "W3A8": (3, 8), "W2A8": (2, 8), "W4A4": (4, 4)}
METHODS = ("rtn", "rtn+bc", "adaround", "brecq", "qdrop")
# which methods each configuration runs: block reconstruction where layer-wise stops
PLAN = {"W8A8": METHODS[:3], "W4A8": METHODS[:4], "W3A8": METHODS[:4], "W2A8": METHODS,
        "W4A4": METHODS}
FRONT_BITS = (4.0, 3.0, 2.5, 2.0, 1.75, 1.5)
AIMET_VERSION = "2.42.0"


# ----------------------------------------------------------------------------- plumbing
@contextlib.contextmanager
def bench_lock(enabled: bool) -> Iterator[None]:
    """Hold the shared benchmark lock (flock) while a timed measurement runs."""
    if not enabled:
        yield
        return
    with open(LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_rows(run_dir: Path) -> dict[str, dict]:
    """Finished rows by key (the last one wins)."""
    rows: dict[str, dict] = {}
    path = run_dir / "rows.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                row = json.loads(line)
                rows[row["key"]] = row
    return rows


def append_row(row: dict, run_dir: Path) -> None:
    """Append one row (a single short write; a torn last line is skipped on reading)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "rows.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class Data:
    """The protocol's tensors: calibration inputs, test and JPEG validation batches."""

    def __init__(self, n_calib: int, n_val: int) -> None:
        from bitsmith.data import cifar10_protocol

        proto = cifar10_protocol(n_calib=n_calib)
        self.calib, _ = proto.calibration.tensors()
        tx, ty = proto.test.tensors()
        vx, vy = proto.val.tensors()
        self.test = _batches(tx, ty, 500)
        self.val = _batches(vx[:n_val], vy[:n_val], 500)
        self.sens = _batches(vx[:1000], vy[:1000], 500)  # sensitivity data (validation)

    def calibration(self) -> list[torch.Tensor]:
        """The calibration inputs in batches of 256 (no labels)."""
        return [self.calib[i:i + 256] for i in range(0, len(self.calib), 256)]


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def score(model: torch.nn.Module, data: Data) -> dict[str, Any]:
    """Accuracy and per-image correctness on the test and validation images."""
    model = model.to(memory_format=torch.channels_last)
    test = correct_string(model, data.test)
    val = correct_string(model, data.val)
    return {"test": 100.0 * test.count("1") / len(test), "val": 100.0 * val.count("1") / len(val),
            "test_correct": test, "val_correct": val}


def load_model(depth: int) -> torch.nn.Module:
    from bitsmith.models import load_pretrained_cifar_resnet

    return load_pretrained_cifar_resnet(depth)


# ----------------------------------------------------------------------------- policies
def weight_spec(bits: int, scheme: str):
    from bitsmith import QSpec

    return QSpec(scheme, bits, "channel", observer="mse")


def uniform_policy(names: list[str], config: str, method: str, args: argparse.Namespace):
    """The uniform policy of ``config`` (first/last W8A8) with ``method``'s rounding."""
    from bitsmith import QSpec
    from bitsmith.policy import build_policy

    wbits, abits = CONFIGS[config]
    rounding = ("nearest" if method.startswith("rtn") else
                rounding_of(method, abits, args, iterations=iterations_for(config, args)))
    return build_policy(names, weight_spec(wbits, args.weight_scheme),
                        QSpec("uniform_asymmetric", abits, observer="mse"), first_last="int8",
                        rounding=rounding, bias_correction=method == "rtn+bc")


def iterations_for(config: str, args: argparse.Namespace) -> int:
    """Steps per unit for ``config`` (``--iterations``, or its ``--iterations-for`` entry)."""
    for item in args.iterations_for:
        name, _, value = item.partition("=")
        if name == config:
            return int(value)
    return args.iterations


def rounding_of(method: str, abits: int, args: argparse.Namespace, **extra: Any):
    from bitsmith.policy import Rounding

    settings = {"iterations": args.iterations, "seed": args.seed, **extra}
    return Rounding(method, batch_size=args.batch_size,
                    learn_act=method != "adaround" and abits < 8, **settings)


# ----------------------------------------------------------------------------- measuring
def export_check(qmodel: torch.nn.Module, model: torch.nn.Module, data: Data) -> dict:
    """Packed artifact (bit-exact reload?) and ONNX QDQ export (agreement with the
    simulation on the test images) of a quantized model, as ``bitsmith export`` checks."""
    import tempfile

    from bitsmith.export import compare_onnx, export_onnx, load_packed, save_packed

    test = [x for x, _ in data.test]
    # the same memory format on both sides: oneDNN's channels-last and contiguous
    # convolutions sum in different orders, which moves logits by up to ~0.2 after the
    # activation quantizers, so a comparison across formats is not bit-exact
    qmodel = qmodel.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        packed = save_packed(qmodel, Path(tmp) / "m.safetensors", example_inputs=test[0][:1])
        loaded = load_packed(Path(tmp) / "m.safetensors", model).to(
            memory_format=torch.channels_last)
        with torch.no_grad():
            exact = all(torch.equal(loaded(x), qmodel(x)) for x in test)
        onnx = export_onnx(qmodel, Path(tmp) / "m.onnx", test[0][:1],
                           calibration=data.calibration())
        agree = compare_onnx(qmodel, Path(tmp) / "m.onnx", data.test)
    return {"packed_bytes": packed.file_bytes, "packed_reload_bit_exact": exact,
            "onnx_integer_layers": onnx.integer_layers, "onnx_float_layers": onnx.float_layers,
            "onnx": agree.to_dict()}


def measure(key: str, model: torch.nn.Module, policy, data: Data, args: argparse.Namespace,
            extra: dict[str, Any], cache: Path | None = None, export: bool = False) -> dict:
    """Quantize (timed, under the lock), score, append the row."""
    import bitsmith
    from bitsmith.cost import estimate

    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    qmodel = bitsmith.quantize(model, policy, calibration=data.calibration(), cache=cache)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # all threads of this process; load-independent-ish
    load1 = os.getloadavg()
    recon = qmodel.bitsmith.reconstruction
    table = qmodel.bitsmith.layer_table
    cost = estimate(table, policy)
    row = {"key": key, **extra, "quantize_seconds": seconds, "cpu_seconds": cpu_seconds,
           "locked": extra.get("locked", False),
           "loadavg_before": load0,
           "loadavg_after": load1, "threads": torch.get_num_threads(),
           "avg_weight_bits": cost.avg_weight_bits, "size_bytes": cost.size_bytes,
           "policy_fingerprint": policy.fingerprint()[:12], **score(qmodel, data)}
    if export:
        row["export"] = export_check(qmodel, model, data)
    if recon is not None:
        row["reconstruction"] = {k: v for k, v in recon.to_dict().items() if k != "settings"}
        row["reconstruction_seconds"] = recon.seconds
        row["iterations"] = policy.rounding.iterations
    append_row(row, args.run_dir)
    print(f"{key}: test {row['test']:.2f} val {row['val']:.2f} "
          f"({seconds:.0f} s, load {load0[0]:.1f})", flush=True)
    return row


def part_table(args: argparse.Namespace, data: Data, done: dict[str, dict]) -> None:
    import bitsmith

    for depth in args.models:
        model = load_model(depth)
        names = bitsmith.prepare(model, data.calib[:1])[1].names
        key = f"r{depth}|fp32"
        if key not in done:
            append_row({"key": key, "model": depth, "config": "FP32", "method": "fp32",
                        **score(model, data)}, args.run_dir)
        for config in args.configs:
            for method in [m for m in args.methods if m in PLAN[config]]:
                iters = iterations_for(config, args)
                key = f"r{depth}|{config}|{method}|{args.weight_scheme}|{iters}"
                if method.startswith("rtn"):
                    key = f"r{depth}|{config}|{method}|{args.weight_scheme}"
                if key in done:
                    continue
                policy = uniform_policy(names, config, method, args)
                measure(key, model, policy, data, args,
                        {"model": depth, "config": config, "method": method,
                         "weight_scheme": args.weight_scheme},
                        export=config == "W4A8" and method in ("rtn", "adaround"))


def part_mixed(args: argparse.Namespace, data: Data, done: dict[str, dict]) -> None:
    """ILP fronts with and without reconstruction (see the module docstring)."""
    import bitsmith
    from bitsmith import LayerSpec, QSpec
    from bitsmith.allocation import CandidateSpace, allocate
    from bitsmith.cost import Budget, InfeasibleBudgetError
    from bitsmith.policy import INT8, Policy
    from bitsmith.sensitivity import measure_sensitivity

    act = QSpec("uniform_asymmetric", 8, observer="mse")
    for depth in args.mixed_models:
        model = load_model(depth)
        table = bitsmith.prepare(model, data.calib[:1])[1]
        names = table.names
        middle = names[1:-1]
        # first / last layer: fixed at W8A8, or chosen by the program among --mixed-edge-bits
        edges = [names[0], names[-1]]
        edge_specs = [INT8] + [LayerSpec(weight_spec(b, args.weight_scheme), INT8.act)
                               for b in args.mixed_edge_bits if b != 8]
        chosen = middle if len(edge_specs) == 1 else names
        base = Policy({n: INT8 for n in edges})  # a candidate of the space overrides it
        grid = [LayerSpec(weight_spec(b, args.weight_scheme), act) for b in args.mixed_bits
                if b > 1 or args.weight_scheme == "uniform_asymmetric"]
        plain = [LayerSpec(QSpec("binary", 1, "channel"), act),
                 LayerSpec(QSpec("ternary", 2, "channel"), act)] + grid
        plain_c = {n: edge_specs if n in edges else plain for n in chosen}
        grid_c = {n: edge_specs if n in edges else grid for n in chosen}
        stats = bitsmith.collect_stats(model, data.calibration(), keep_inputs=True)
        cache = args.run_dir / "cache"
        final_seed = args.seed if args.mixed_seed is None else args.mixed_seed
        final_steps = args.mixed_iterations or args.iterations
        variants = {
            "rtn": (CandidateSpace(table, plain_c), base, None),
            "recon": (CandidateSpace(table, grid_c),
                      base.with_options(rounding=rounding_of(
                          "adaround", 8, args, inputs="float",
                          iterations=args.sensitivity_iterations)),
                      rounding_of(args.mixed_method, 8, args,
                                  iterations=final_steps, seed=final_seed)),
        }
        # rows of the defaults keep their keys; other settings are part of the key and label
        setting, notes = "", []
        if args.mixed_method != "qdrop" or args.mixed_iterations:
            setting += f"|{args.mixed_method}|{final_steps}"
            notes.append(f"{args.mixed_method}, {final_steps} steps")
        if len(edge_specs) > 1:
            edge_bits = sorted(args.mixed_edge_bits)
            setting += "|edges" + "-".join(map(str, edge_bits))
            notes.append("first/last " + " or ".join(map(str, edge_bits)) + " bits")
        if final_seed != args.seed:
            setting += f"|seed{final_seed}"
            notes.append(f"seed {final_seed}")
        label = f" ({', '.join(notes)})" if notes else ""
        for variant, (space, sens_base, final_rounding) in variants.items():
            if variant not in args.mixed_variants:
                continue
            t0 = time.perf_counter()
            sens = measure_sensitivity(model, space, data.sens, calibration=stats,
                                       base=sens_base, cache=cache)
            sens_seconds = time.perf_counter() - t0
            for bits in args.front_bits:
                key = (f"r{depth}|mixed|{variant}|{bits}|{args.weight_scheme}|{args.iterations}"
                       + setting)
                if key in done:
                    continue
                try:
                    alloc = allocate(space, sens, Budget(avg_weight_bits=bits),
                                     metric="measured_kl", base=base)
                except InfeasibleBudgetError as err:
                    append_row({"key": key, "model": depth, "config": f"mixed {bits}",
                                "method": variant, "budget_avg_bits": bits,
                                "infeasible": True, "minimum_avg_bits": err.minimum},
                               args.run_dir)
                    continue
                policy = alloc.policy
                if final_rounding is not None:
                    policy = policy.with_options(rounding=final_rounding)
                labels = {n: space.labels(n)[i] for n, i in alloc.choices.items()}
                measure(key, model, policy, data, args,
                        {"model": depth, "config": f"mixed {bits}",
                         "method": variant + (label if variant == "recon" else ""),
                         "budget_avg_bits": bits, "sensitivity_seconds": sens_seconds,
                         "choices": labels, "schemes": {
                             n: policy[n].weight.scheme for n in middle}}, cache=None)


# ----------------------------------------------------------------------------- AIMET
def aimet_python(args: argparse.Namespace) -> Path:
    """The separate AIMET venv's python (created and installed on first use)."""
    venv = Path(args.aimet_venv)
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import aimet_torch, sys; sys.exit(0)"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"aimet-torch=={AIMET_VERSION}"],
                   check=True)
    return python


class Aimet:
    """Runs benchmarks/aimet_adaround.py in the AIMET venv on this benchmark's tensors."""

    def __init__(self, args: argparse.Namespace, data: Data) -> None:
        self.args, self.python = args, aimet_python(args)
        args.run_dir.mkdir(parents=True, exist_ok=True)
        self.npz = args.run_dir / "aimet_data.npz"
        tx = torch.cat([x for x, _ in data.test])
        vx = torch.cat([x for x, _ in data.val])
        np.savez(self.npz, calib=data.calib.numpy(), test=tx.numpy(), val=vx.numpy())
        self.labels = {"test": torch.cat([y for _, y in data.test]),
                       "val": torch.cat([y for _, y in data.val])}

    def run(self, key: str, depth: int, config: str, locked: bool, timed: bool = False
            ) -> dict:
        wbits, abits = CONFIGS[config]
        iters = iterations_for(config, self.args)
        cmd = [str(self.python), str(ROOT / "benchmarks" / "aimet_adaround.py"),
               "--depth", str(depth), "--src", str(ROOT / "src"), "--data", str(self.npz),
               "--param-bw", str(wbits), "--output-bw", str(abits), "--iterations", str(iters),
               "--batch-size", str(self.args.batch_size),
               "--threads", str(torch.get_num_threads())]
        load0 = os.getloadavg()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
            raise RuntimeError(f"AIMET run {key} failed (exit {proc.returncode})")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"key": key, "model": depth, "config": config, "method": "aimet-adaround",
               "iterations": iters, "loadavg_before": load0, "locked": locked, "timed": timed,
               "threads": torch.get_num_threads(), "aimet_version": out["aimet_version"],
               "reconstruction_seconds": out["adaround_seconds"],
               "quantize_seconds": out["total_seconds"], "notes": out["notes"],
               "aimet_weight_bits": out["weight_bits"]}
        for split in ("test", "val"):
            pred = torch.tensor(out[f"{split}_pred"])
            correct = "".join("1" if c else "0" for c in (pred == self.labels[split]).tolist())
            row[split] = 100.0 * correct.count("1") / len(correct)
            row[f"{split}_correct"] = correct
        append_row(row, self.args.run_dir)
        print(f"{key}: test {row['test']:.2f} val {row['val']:.2f} "
              f"({row['quantize_seconds']:.0f} s)", flush=True)
        return row


def part_aimet(args: argparse.Namespace, data: Data, done: dict[str, dict]) -> None:
    aimet = Aimet(args, data)
    for depth in args.models:
        for config in args.aimet_configs:
            key = f"r{depth}|{config}|aimet-adaround|{iterations_for(config, args)}"
            if key not in done:
                aimet.run(key, depth, config, locked=False)


def part_timing(args: argparse.Namespace, data: Data, done: dict[str, dict]) -> None:
    """Wall times under the benchmark lock (held per group), bitsmith and AIMET
    interleaved on the same configuration."""
    import bitsmith

    aimet = Aimet(args, data)
    model = load_model(20)
    names = bitsmith.prepare(model, data.calib[:1])[1].names
    plan = [(("W3A8", "adaround"), ("W3A8", "aimet")), (("W4A8", "adaround"), ("W4A8", "aimet")),
            (("W4A4", "qdrop"),), (("W4A4", "brecq"),)]
    for group in plan:  # the lock is held per group, so other agents' timings interleave
        with bench_lock(args.lock):
            for config, method in group:
                iters = iterations_for(config, args)
                key = f"r20|{config}|{method}|timed|{iters}"
                if key in done:
                    continue
                if method == "aimet":
                    aimet.run(key, 20, config, locked=args.lock, timed=True)
                    continue
                # W4A8's units go to the cache (a fresh folder: nothing is read back while
                # timed) so that the export part checks the exports of this very model
                writes = config == "W4A8"
                measure(key, model, uniform_policy(names, config, method, args), data, args,
                        {"model": 20, "config": config, "method": method, "timed": True,
                         "locked": args.lock, "weight_scheme": args.weight_scheme,
                         "cache_written": writes},
                        cache=args.run_dir / "cache-export" if writes else None)


def part_export(args: argparse.Namespace, data: Data, done: dict[str, dict]) -> None:
    """Packed and ONNX exports of W4A8 RTN and AdaRound (the latter read back from the
    cache the timing part wrote, else learned here)."""
    import bitsmith

    model = load_model(20)
    names = bitsmith.prepare(model, data.calib[:1])[1].names
    for method in ("rtn", "adaround"):
        key = f"r20|W4A8|{method}|export|{iterations_for('W4A8', args)}"
        if key not in done:
            measure(key, model, uniform_policy(names, "W4A8", method, args), data, args,
                    {"model": 20, "config": "W4A8", "method": method, "export_only": True,
                     "weight_scheme": args.weight_scheme},
                    cache=args.run_dir / "cache-export", export=True)


# ----------------------------------------------------------------------------- summary
def _paired(row: dict, ref: dict | None, split: str) -> dict | None:
    if ref is None or f"{split}_correct" not in ref or f"{split}_correct" not in row:
        return None
    a, b, p = mcnemar_counts(row[f"{split}_correct"], ref[f"{split}_correct"])
    return {"only_this_right": a, "only_reference_right": b, "p": p}


def summarize(rows: dict[str, dict], args: argparse.Namespace) -> None:
    """Write benchmarks/results/<results-name>.{json,md} from every finished row."""
    by: dict[int, list[dict]] = {}
    for row in rows.values():
        by.setdefault(row["model"], []).append(row)
    lines = [
        "Calibration: 1,024 lossless training images (no labels). Accuracy on the 1,000 "
        "lossless test images (test) and the 5,000 JPEG validation images (val); drop = FP32 "
        "- quantized on the same images. First and last layer W8A8 (mixed rows: as "
        "labelled); other layers "
        "per-channel weights with an MSE-observer range, activations per tensor (MSE "
        "observer). p: exact McNemar test (paired, same images) against RTN and RTN + BC of "
        "the same configuration. Wall time: the whole bitsmith.quantize call for bitsmith "
        "(calibration and reconstruction), the whole AIMET run (model preparation, BN "
        "folding, Adaround.apply_adaround, QuantSim encodings) for AIMET; load = 1-minute load "
        "average when the row started (2-core machine shared with other agents).", ""]
    out_rows, checks = [], {}
    for depth in sorted(by):
        group = by[depth]
        fp32 = next((r for r in group if r["method"] == "fp32"), None)
        lines += [f"## ResNet-{depth}", ""]
        if fp32:
            lines += [f"FP32: test {fp32['test']:.2f} %, val {fp32['val']:.2f} %", ""]
        uniform = [r for r in group if r["config"] in CONFIGS and "test" in r
                   and not r.get("timed") and not r.get("export_only")]
        timed = [r for r in group if r.get("timed")]
        uniform += _timed_only(timed, uniform)
        lines += _uniform_table(uniform, group, fp32, out_rows)
        lines += _timing_lines(timed, uniform, out_rows)
        lines += _aimet_lines(uniform, timed)
        lines += _mixed_lines([r for r in group if r["config"].startswith("mixed")], fp32,
                              out_rows)
        exports = [r for r in group if r.get("export_only")]
        out_rows += [{k: v for k, v in r.items() if not k.endswith("_correct")}
                     for r in exports]
        lines += _export_lines(exports or uniform)
        checks[f"resnet{depth}"] = _checks(uniform, group, timed)
    lines += ["## Acceptance checks", "", "```", json.dumps(checks, indent=1), "```", ""]
    write_result(args.results_name, {
        "protocol": {"calibration_images": 1024, "test_images": 1000, "val_images": args.n_val,
                     "first_last": "W8A8 (uniform_symmetric per-channel / uniform_asymmetric)",
                     "weights": "per-channel, MSE-observer range; activations "
                                "uniform_asymmetric per tensor, MSE observer",
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "checks": checks, "rows": out_rows}, lines)


def _uniform_table(uniform: list[dict], group: list[dict], fp32: dict | None,
                   out_rows: list[dict]) -> list[str]:
    lines = ["| config | method | iters | test % | drop | val % | drop | p vs RTN (test / val) "
             "| p vs RTN+BC (test / val) | wall s | load |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in sorted(uniform, key=_order):
        paired = {f"vs_{n}_{s}": _paired(r, _reference(group, r, n), s)
                  for n in ("rtn", "rtn+bc") for s in ("test", "val")}
        out = {k: v for k, v in r.items() if not k.endswith("_correct")}
        out["paired"] = paired
        if fp32:
            out["test_drop"] = fp32["test"] - r["test"]
            out["val_drop"] = fp32["val"] - r["val"]
        out_rows.append(out)
        lines.append(
            f"| {r['config']} | {r['method']} | {r.get('iterations', '')} | {r['test']:.2f} | "
            f"{out.get('test_drop', 0):+.2f} | {r['val']:.2f} | {out.get('val_drop', 0):+.2f} | "
            f"{_p(paired['vs_rtn_test'])} / {_p(paired['vs_rtn_val'])} | "
            f"{_p(paired['vs_rtn+bc_test'])} / {_p(paired['vs_rtn+bc_val'])} | {_secs(r)} | "
            f"{r.get('loadavg_before', [float('nan')])[0]:.1f} |")
    return lines + [""]


def _method(r: dict) -> str:
    return "aimet-adaround" if r["method"] == "aimet" else r["method"]


def _twin(r: dict, rows: list[dict]) -> dict | None:
    """The row of ``rows`` with ``r``'s configuration, method and iterations."""
    return next((u for u in rows if u["config"] == r["config"] and u["method"] == _method(r)
                 and u.get("iterations") == r.get("iterations")), None)


def _timed_only(timed: list[dict], uniform: list[dict]) -> list[dict]:
    """Timed rows without an untimed twin stand in the accuracy table too (their accuracy is
    measured like any other; their wall time is the locked one)."""
    return [{**r, "method": _method(r)} for r in timed if _twin(r, uniform) is None]


def _aimet_lines(uniform: list[dict], timed: list[dict]) -> list[str]:
    peers = [r for r in uniform if r["method"] == "aimet-adaround"]
    if not peers:
        return []
    lines = ["AIMET AdaRound vs bitsmith on the same images and iterations (wall seconds: "
             "a timed AIMET row is set beside bitsmith's timed run of the same configuration, "
             "under the same lock):", "",
             "| config | AIMET test / val | AIMET s | bitsmith adaround test / val | s | "
             "best bitsmith (method) test / val | s | p (best vs AIMET, test / val) |",
             "|---|---|---:|---|---:|---|---:|---|"]
    for a in sorted(peers, key=_order):
        mine = [r for r in uniform if r["config"] == a["config"] and
                r["method"] in METHODS[2:]]
        ada = next((r for r in mine if r["method"] == "adaround"), None)
        if a.get("timed"):
            ada = next((t for t in timed if t["config"] == a["config"]
                        and t["method"] == "adaround"), ada)
        best = max(mine, key=lambda r: r["test"], default=None)
        cells = [f"{a['config']}", f"{a['test']:.2f} / {a['val']:.2f}", _secs(a)]
        for r, named in ((ada, False), (best, True)):
            if r is None:
                cells += ["", ""]
            else:
                name = f" ({r['method']})" if named else ""
                cells += [f"{r['test']:.2f} / {r['val']:.2f}{name}", _secs(r)]
        pair = [_paired(best, a, sp) if best else None for sp in ("test", "val")]
        cells.append(f"{_p(pair[0])} / {_p(pair[1])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _mixed_lines(mixed: list[dict], fp32: dict | None, out_rows: list[dict]) -> list[str]:
    if not mixed:
        return []
    lines = ["Mixed policies found by the integer program (measured-KL sensitivities on 1,000 "
             "JPEG validation images; rtn: round-to-nearest everywhere, binary / ternary among "
             "the candidates; recon: sensitivities after per-layer AdaRound, grid schemes, the "
             "allocated policy reconstructed):", "",
             "| avg bits budget | variant | avg bits | test % | val % | val drop | wall s | "
             "layers at 1 / 2 / 3 / 4 / 8 bits (binary, ternary) |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(mixed, key=lambda r: (-r["budget_avg_bits"], r["method"])):
        out_rows.append({k: v for k, v in r.items() if not k.endswith("_correct")})
        if r.get("infeasible"):
            lines.append(f"| {r['budget_avg_bits']} | {r['method']} | infeasible (minimum "
                         f"{r['minimum_avg_bits']:.2f}) | | | | | |")
            continue
        labels = list(r["choices"].values())
        hist = " / ".join(str(sum(lab.startswith(f"W{b}A") for lab in labels))
                          for b in (1, 2, 3, 4, 8))
        special = sum(s in ("binary", "ternary") for s in r["schemes"].values())
        drop = "" if fp32 is None else f"{fp32['val'] - r['val']:+.2f}"
        lines.append(f"| {r['budget_avg_bits']} | {r['method']} | {r['avg_weight_bits']:.2f} | "
                     f"{r['test']:.2f} | {r['val']:.2f} | {drop} | {_secs(r)} | {hist} "
                     f"({special}) |")
    return lines + [""]


def _timing_lines(timed: list[dict], uniform: list[dict], out_rows: list[dict]) -> list[str]:
    if not timed:
        return []
    lines = ["Wall time under the benchmark lock (one process, bitsmith and AIMET interleaved; "
             "same threads as the table, so the same accuracy is expected):", "",
             "| config | method | iters | wall s | of which reconstruction s | threads | load "
             "before | test % | same as the table row |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in timed:
        method = _method(r)
        twin = _twin(r, [u for u in uniform if not u.get("timed")])
        if twin is not None:  # a timed-only row is already in the table's rows
            out_rows.append({k: v for k, v in r.items() if not k.endswith("_correct")})
        same = "(table row)" if twin is None else str(
            twin.get("test_correct") == r.get("test_correct"))
        lines.append(f"| {r['config']} | {method} | {r.get('iterations', '')} | "
                     f"{r['quantize_seconds']:.0f} | {r.get('reconstruction_seconds', 0):.0f} | "
                     f"{r.get('threads', '')} | {r['loadavg_before'][0]:.1f} | {r['test']:.2f} | "
                     f"{same} |")
    return lines + [""]


def _export_lines(uniform: list[dict]) -> list[str]:
    rows = [r for r in uniform if "export" in r]
    if not rows:
        return []
    lines = ["Exports of W4A8 (packed artifact reloaded; ONNX QDQ in ONNX Runtime vs the "
             "simulation on the 1,000 test images):", "",
             "| method | packed bytes | reload bit-exact | ONNX integer layers | top-1 agreement % "
             "| max abs logit error |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        e = r["export"]
        lines.append(f"| {r['method']} | {e['packed_bytes']:,} | {e['packed_reload_bit_exact']} "
                     f"| {e['onnx_integer_layers']} | {e['onnx']['top1_agreement']:.1f} | "
                     f"{e['onnx']['max_abs_error']:.4f} |")
    return lines + [""]


def _checks(uniform: list[dict], group: list[dict], timed: list[dict]) -> dict:
    """The issue's acceptance thresholds against the measured rows (None: not measured);
    wall times from the timing part (under the lock)."""
    def best(config: str, methods: tuple[str, ...] = METHODS[2:]) -> dict | None:
        rows = [r for r in uniform if r["config"] == config and r["method"] in methods]
        return max(rows, key=lambda r: r["test"], default=None)

    out: dict[str, Any] = {}
    for config, target, limit in (("W4A8", 91.3, 300), ("W3A8", 91.3, 300),
                                  ("W4A4", 90.8, 600), ("W2A8", 89.5, None)):
        r = best(config)
        clock = [t for t in timed if t["config"] == config and t["method"] != "aimet"]
        fastest = min(clock, key=lambda t: t["quantize_seconds"], default=None)
        out[config] = None if r is None else {
            "best_method": r["method"], "test": r["test"], "val": r["val"], "target": target,
            "met": r["test"] >= target, "wall_limit_s": limit,
            "timed_method": None if fastest is None else fastest["method"],
            "timed_wall_s": None if fastest is None else fastest["quantize_seconds"],
            "timed_test": None if fastest is None else fastest["test"],
            "timed_load_before": None if fastest is None else fastest["loadavg_before"][0],
            "wall_met": None if limit is None or fastest is None
            else fastest["quantize_seconds"] <= limit}
    rtn8 = next((r for r in uniform if r["config"] == "W8A8" and r["method"] == "rtn"), None)
    ada8 = next((r for r in uniform if r["config"] == "W8A8" and r["method"] == "adaround"),
                None)
    if rtn8 and ada8:
        out["W8A8_unchanged_or_better"] = {"rtn": rtn8["test"], "adaround": ada8["test"],
                                           "met": ada8["test"] >= rtn8["test"]}
    # every reconstruction setting measured at the budget, each with its own verdict
    recon = [r for r in group if r["config"].startswith("mixed")
             and r["method"].startswith("recon") and "test" in r]
    for bits, target in ((2.5, 91.2), (2.0, 90.5)):
        rows = [r for r in recon if r["budget_avg_bits"] == bits]
        out[f"mixed_{bits}"] = [{"setting": r["method"], "test": r["test"], "val": r["val"],
                                 "avg_bits": r["avg_weight_bits"], "target": target,
                                 "met": r["test"] >= target} for r in rows] or None
    return out


def _order(r: dict) -> tuple:
    configs = list(CONFIGS)
    c = r["config"]
    rank = configs.index(c) if c in configs else len(configs)
    methods = list(METHODS) + ["aimet-adaround", "rtn", "recon"]
    return (rank, c, methods.index(r["method"]) if r["method"] in methods else 99)


def _reference(group: list[dict], row: dict, method: str) -> dict | None:
    if row["method"] == method:
        return None
    for r in group:
        if r["config"] == row["config"] and r["method"] == method and \
                r.get("weight_scheme") == row.get("weight_scheme", r.get("weight_scheme")):
            return r
    return None


def _p(pair: dict | None) -> str:
    if pair is None:
        return ""
    return "<1e-300" if pair["p"] == 0 else f"{pair['p']:.2g}"  # 0: below float range


def _secs(r: dict) -> str:
    s = r.get("quantize_seconds", r.get("reconstruction_seconds"))
    return "" if s is None else f"{s:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["table"],
                        choices=["table", "mixed", "aimet", "timing", "export"])
    parser.add_argument("--models", nargs="+", type=int, default=[20, 32])
    parser.add_argument("--mixed-models", nargs="+", type=int, default=[20])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--aimet-configs", nargs="+", default=["W4A8", "W3A8", "W2A8"],
                        choices=list(CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--mixed-method", default="qdrop", choices=METHODS[2:])
    parser.add_argument("--mixed-variants", nargs="+", default=["rtn", "recon"],
                        choices=["rtn", "recon"], help="fronts without / with reconstruction")
    parser.add_argument("--mixed-bits", nargs="+", type=int, default=[1, 2, 3, 4, 8])
    parser.add_argument("--mixed-edge-bits", nargs="+", type=int, default=[8],
                        help="weight bits the program may give the first / last layer "
                             "(default: fixed at 8)")
    parser.add_argument("--mixed-iterations", type=int, default=0,
                        help="steps of the allocated policy's reconstruction "
                             "(0: --iterations)")
    parser.add_argument("--mixed-seed", type=int, default=None,
                        help="seed of the allocated policy's reconstruction only (default: "
                             "--seed; the sensitivities keep --seed and their cache)")
    parser.add_argument("--front-bits", nargs="+", type=float, default=list(FRONT_BITS),
                        help="average weight-bit budgets of the fronts")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--iterations-for", nargs="*", default=["W2A8=2000"],
                        help="per-configuration steps, e.g. W2A8=2000")
    parser.add_argument("--sensitivity-iterations", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weight-scheme", default="uniform_asymmetric",
                        choices=["uniform_symmetric", "uniform_asymmetric"])
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lock", dest="lock", action="store_false")
    parser.add_argument("--aimet-venv", default=str(ROOT / "runs" / "aimet-venv"))
    parser.add_argument("--summarize", action="store_true", help="only rewrite the results")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR,
                        help="rows.jsonl (resume), the unit cache and AIMET's data")
    parser.add_argument("--results-name", default="ptq_reconstruction",
                        help="benchmarks/results/NAME.{json,md}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.summarize:
        data = Data(1024, args.n_val)
        parts = {"table": part_table, "mixed": part_mixed, "aimet": part_aimet,
                 "timing": part_timing, "export": part_export}
        for part in args.parts:
            parts[part](args, data, load_rows(args.run_dir))
    summarize(load_rows(args.run_dir), args)


if __name__ == "__main__":
    main()
