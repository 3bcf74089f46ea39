"""Benchmark: training-time mixed-precision search (AutoQNN QPL/QSS, SSPS) on ResNet-20.

Protocol (shared/data/SOURCES.md): pretrained ResNet-20 (91.50 % on the 1,000 lossless test
images), weights trained on the JPEG fine-tuning split (+ the 4,000 lossless images,
augmented), architecture parameters on the held-out JPEG validation split, calibration on
the lossless training images, accuracy reported on the 1,000 lossless test images only.
First and last layer fixed at W8A8 in every policy (counted in every budget).

Parts:
  a  QPL, budget avg weight bits <= 4 (all layers), activations 4 bit; target >= 90.50 %.
  b  QSS, size <= size of the uniform W3A4 policy; vs uniform W3A4 trained with the same
     recipe (same supernet phase with one candidate, same QAT steps, same KD, same data).
  c  SSPS, BitOPs <= BitOPs of the uniform W3A4 policy; vs the same uniform W3A4 run.
     Declared setting: measured-KL-ILP warm start, strength 3 (initial probability 0.83 of
     the allocated candidate), threshold 0.6, warm-up 20 (the earlier declared Fisher-ILP
     warm start is --ssps-warm-start fisher); variants via --ssps-warm-start,
     --ssps-warm-strength, --ssps-threshold, --ssps-warmup with --key NAME; repeats with
     other seeds (data order, search, QAT) via --seed S --key c_kl_s3_seedS / u3_seedS,
     summarised as the mean gap over seeds.
  mem  wall-clock per step and peak RSS of the single-path (SSPS) vs expected (composite)
     vs full multi-path supernet, each in a fresh process.

CPU budget: one thread, short schedules (a fraction of an epoch); see --search-steps and
--qat-steps. Results: benchmarks/results/search_resnet20.{json,md}.

Usage:  nice python benchmarks/search_resnet20.py --search-steps 120 --qat-steps 450
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    RESULTS,
    correct_string,
    mcnemar_counts,
    write_result,
)

PARTIAL = RESULTS / "search_resnet20.partial.json"
RUNS = Path("/tmp/bitsmith_search_runs")


def _setup(batch: int, seed: int = 0):
    from bitsmith.data import cifar10_protocol, make_loader
    from bitsmith.models import build_model

    proto = cifar10_protocol(n_val=2000)
    train_loader = make_loader(proto.finetune, batch_size=batch, shuffle=True, seed=seed,
                               drop_last=True)
    calib = make_loader(proto.calibration, batch_size=128, shuffle=False)
    test = make_loader(proto.test, batch_size=250)
    model = build_model("resnet20", pretrained=True).eval()
    return proto, train_loader, calib, test, model


def _uniform_w3_costs(model, example, scheme: str = "uniform_symmetric"):
    from bitsmith.cost import estimate
    from bitsmith.policy import INT8, LayerSpec, Policy, QSpec
    from bitsmith.quantize import prepare

    _, table, _ = prepare(model, example)
    names = table.names
    spec = LayerSpec(QSpec(scheme, 3, "channel"), QSpec("uniform_asymmetric", 4))
    pol = Policy({n: (INT8 if n in (names[0], names[-1]) else spec) for n in names})
    return estimate(table, pol)


def run_part(part: str, args) -> dict:
    from bitsmith.cost import Budget, within_budget
    from bitsmith.engine import evaluate
    from bitsmith.search import SearchConfig, SupernetSpace, search
    from bitsmith.training import TrainConfig

    proto, train_loader, calib, test, model = _setup(args.batch, args.seed)
    example = next(iter(calib))[0][:8]
    u3 = _uniform_w3_costs(model, example, args.weight_scheme)
    search_cfg = TrainConfig(max_steps=args.search_steps, lr=args.lr, weight_decay=0.0,
                             grad_clip=10.0, log_every=10, checkpoint_every=50, progress=False,
                             seed=args.seed)
    qat_cfg = TrainConfig(max_steps=args.qat_steps, lr=args.lr, weight_decay=0.0, grad_clip=10.0,
                          distill_weight=args.kd, distill_temperature=4.0, log_every=20,
                          checkpoint_every=100, progress=False, seed=args.seed)
    bits = (2, 3, 4, 5, 6)
    labels = {"model": "ResNet-20 (pretrained)", "dataset": "CIFAR-10"}
    if part == "a":
        budget = Budget(avg_weight_bits=4.0)
        st = SearchConfig(method="qpl", budget=budget,
                          space=SupernetSpace.uniform_bits(bits + (8,), (4,)), search=search_cfg,
                          qat=qat_cfg, labels=labels, arch_updates="joint",
                          method_kw={"arch_lr": 0.05, "penalty": 2.0, "init_bits": 4.0})
    elif part == "b":
        budget = Budget(size_bytes=u3.size_bytes)
        st = SearchConfig(method="qss", budget=budget,
                          space=SupernetSpace.uniform_bits(bits, (4,)), search=search_cfg,
                          qat=qat_cfg, labels=labels, method_kw={
                              "arch_lr": 0.05, "penalty": 2.0, "tau0": 5.0, "tau_min": 0.5})
    elif part == "c":
        budget = Budget(bitops=u3.bitops)
        st = SearchConfig(method="ssps", budget=budget,
                          space=SupernetSpace.uniform_bits(bits, args.act_bits,
                                                           scheme=args.weight_scheme),
                          search=search_cfg, qat=qat_cfg, labels=labels,
                          method_kw={"arch_lr": 0.05, "penalty": 2.0,
                                     "threshold": args.ssps_threshold,
                                     "warmup_steps": args.ssps_warmup})
        if args.ssps_warm_start != "none":
            st = st.replace(warm_start=args.ssps_warm_start,
                            warm_start_strength=args.ssps_warm_strength)
    elif part == "u3":
        budget = Budget(size_bytes=u3.size_bytes, bitops=u3.bitops)
        st = SearchConfig(method="qpl", budget=budget, space=SupernetSpace.uniform_bits(
            (3,), (4,), scheme=args.weight_scheme), search=search_cfg, qat=qat_cfg,
            labels=labels, arch_updates="joint")
    else:
        raise ValueError(part)
    # QSS/SSPS update the architecture on the JPEG validation split (DNAS alternation); the
    # searched policy is scored on it and, for the table, on the 1,000 lossless test images.
    t0 = time.perf_counter()
    o = search(model, calib, proto.val, config=st, out_dir=RUNS / f"{part}{args.run_tag}",
               train_data=train_loader).details
    o.accuracy = evaluate(o.qmodel, test).accuracy
    o.fp32_accuracy = evaluate(model, test).accuracy
    res = o.summary()
    res.update(part=part, budget=dict(budget.items()), weight_scheme=args.weight_scheme,
               act_bit_candidates=list(st.space.act_bits),
               wall_s=time.perf_counter() - t0,
               search_steps=args.search_steps, qat_steps=args.qat_steps, batch=args.batch,
               seed=args.seed,
               method_kw=st.method_kw, warm_start_setting=(
                   st.warm_start if isinstance(st.warm_start, str) else None),
               warm_start_strength=st.warm_start_strength,
               search_s_per_step=o.search_seconds / max(o.search_result.steps, 1),
               qat_s_per_step=o.qat_seconds / max(o.qat_result.steps, 1) if o.qat_result
               else None, layers=o.derivation.rows,
               weight_bits={n: s.weight.bits for n, s in o.policy.items() if s.weight},
               act_bits={n: s.act.bits for n, s in o.policy.items() if s.act},
               within_budget=within_budget(o.derivation.cost, budget),
               uniform_w3a4={"size_bytes": u3.size_bytes, "bitops": u3.bitops,
                             "avg_weight_bits": u3.avg_weight_bits},
               correct=correct_string(o.qmodel, test),
               val_accuracy=_val_accuracy(o.qmodel, proto))
    return res


def _val_accuracy(model, proto) -> float:
    """Accuracy on the held-out JPEG validation split: the protocol's model-selection set
    (the architecture steps draw from it; no weight is trained on it; never the test set)."""
    from bitsmith.data import make_loader
    from bitsmith.engine import evaluate

    return evaluate(model, make_loader(proto.val, batch_size=250)).accuracy


def mcnemar(a: str, b: str) -> dict:
    """Exact two-sided McNemar test of two per-image correctness strings."""
    only_a, only_b, p = mcnemar_counts(a, b)
    return {"only_searched_right": only_a, "only_uniform_right": only_b,
            "mcnemar_exact_p": p}


def mem_child(path: str, steps: int, batch: int) -> dict:
    """One fresh process: build the supernet, train ``steps`` steps, report RSS and time."""
    from torch.utils.data import DataLoader, TensorDataset

    from bitsmith.cost.budget import Budget
    from bitsmith.models import build_model
    from bitsmith.search import SupernetSpace, build_supernet, make_method
    from bitsmith.training import TrainConfig, train

    # Synthetic CIFAR-shaped data: the training memory does not depend on the pixels, and
    # skipping the JPEG decode keeps the process's earlier peak RSS below the training one.
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batch * steps, 3, 32, 32, generator=g),
                         torch.randint(0, 10, (batch * steps,), generator=g))
    train_loader = DataLoader(data, batch_size=batch, shuffle=True)
    model = build_model("resnet20", pretrained=True).eval()
    example = data.tensors[0][:8]
    space = SupernetSpace.uniform_bits((2, 3, 4, 5, 6), (4, 8))
    net = build_supernet(model, example, space, [(data.tensors[0][:128], None)])
    method = make_method("ssps", net, Budget(avg_weight_bits=4.0), path=path, threshold=1.0)
    rss0 = _proc_kib("VmRSS") * 1024
    reset = _reset_peak_rss()  # peak of the training alone, not of the calibration before it
    t0 = time.perf_counter()
    train(net.model, train_loader, TrainConfig(max_steps=steps, progress=False, lr=1e-4,
                                               find_unused_parameters=True),
          callbacks=[method])
    dt = (time.perf_counter() - t0) / steps
    rss1 = (_proc_kib("VmHWM") * 1024 if reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"path": path, "s_per_step": dt, "peak_rss_bytes": rss1,
            "rss_before_training": rss0, "training_rss_increase_bytes": rss1 - rss0,
            "peak_reset": reset, "batch": batch, "steps": steps, "weight_candidates": 5,
            "act_candidates": 2}


def _proc_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``); 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ``clear_refs`` 5); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_kib("VmHWM") > 0
    except OSError:
        return False


def _save_partial(results: dict, path: Path = PARTIAL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,u3,c,mem")
    ap.add_argument("--search-steps", type=int, default=120)
    ap.add_argument("--qat-steps", type=int, default=450)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--kd", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mem-steps", type=int, default=5)
    ap.add_argument("--partial", default=str(PARTIAL), help="where finished parts are kept")
    ap.add_argument("--ssps-threshold", type=float, default=0.6)
    ap.add_argument("--ssps-warmup", type=int, default=20)
    ap.add_argument("--ssps-warm-start", default="measured_kl",
                    choices=("none", "fisher", "hessian", "measured_kl"),
                    help="part c: initialise the SSPS logits at the sensitivity + ILP policy")
    ap.add_argument("--ssps-warm-strength", type=float, default=3.0,
                    help="part c: logit advantage of the warm-start choice")
    ap.add_argument("--weight-scheme", default="uniform_symmetric",
                    help="parts c and u3: weight scheme of every candidate (uniform_symmetric: "
                         "narrow signed range, 2 bits = ternary; uniform_asymmetric: all 2^b "
                         "levels with a per-channel zero point)")
    ap.add_argument("--act-bits", type=lambda t: tuple(int(b) for b in t.split(",")),
                    default=(4,), help="part c: activation bit candidates, e.g. 3,4,6 (the "
                                       "BitOPs budget stays that of uniform W3A4)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the data order, the search and the QAT (parts c and u3 are "
                         "paired by weight scheme, QAT steps and seed)")
    ap.add_argument("--run-tag", default="", help="suffix of the run folder")
    ap.add_argument("--key", default="", help="store the (single) part under this name")
    ap.add_argument("--label", default="", help="description of the variant (md table)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    partial = Path(args.partial)
    if args.mem_child:
        print("MEM " + json.dumps(mem_child(args.mem_child, args.mem_steps, args.batch)))
        return
    if partial.is_file():
        results = json.loads(partial.read_text())
    elif (RESULTS / "search_resnet20.json").is_file():  # keep the rows already published
        results = json.loads((RESULTS / "search_resnet20.json").read_text())["results"]
    else:
        results = {}
    for part in args.parts.split(","):
        if not part:
            continue
        key = args.key or part
        if key in results:
            print(f"part {key}: already done (in {partial})", flush=True)
            continue
        t0 = time.perf_counter()
        if part == "mem":
            rows = []
            for path in ("single", "expected", "multipath"):
                out = subprocess.run([sys.executable, __file__, "--mem-child", path,
                                      "--mem-steps", str(args.mem_steps),
                                      "--batch", str(args.batch)],
                                     capture_output=True, text=True, check=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("MEM ")][-1]
                rows.append(json.loads(line[4:]))
            results["mem"] = {"rows": rows}
        else:
            results[key] = run_part(part, args)
            results[key]["label"] = args.label or key
        brief = {k: v for k, v in results[key].items() if k not in ("layers", "correct")}
        print(f"part {key} done in {time.perf_counter() - t0:.0f} s: "
              f"{json.dumps(brief)[:600]}", flush=True)
        _paired(results)
        _save_partial(results, partial)
    _paired(results)
    summarize(results, args)


def _paired(results: dict) -> None:
    """McNemar of every run with per-image predictions vs the uniform W3A4 run that has them.

    The first uniform run (``u3``) kept no per-image predictions; its paired tests
    (``reference`` absent) were computed then from its saved model. ``u3_rerun`` (the same
    recipe rerun) is the reference of every later run (``reference: "u3_rerun"``).
    """
    ref_key = next((k for k in ("u3", "u3_rerun") if results.get(k, {}).get("correct")), None)
    if ref_key is None:
        return
    paired = results.setdefault("paired", {})
    for key, r in results.items():
        if isinstance(r, dict) and r.get("correct") and not key.startswith("u3"):
            ref = _reference(results, key, ref_key)
            paired[key] = {**mcnemar(r["correct"], results[ref]["correct"]), "reference": ref}


def _reference(results: dict, key: str, default: str) -> str:
    """The uniform run a searched run is compared with: the one with its weight scheme and
    QAT steps (``default`` for the symmetric 450-step recipe)."""
    def recipe(r: dict) -> tuple:
        return (r.get("weight_scheme", "uniform_symmetric"), r.get("qat_steps", 450),
                r.get("seed", 0))

    mine = recipe(results[key])
    if mine == ("uniform_symmetric", 450, 0):
        return default
    for k, r in results.items():
        if k.startswith("u3") and isinstance(r, dict) and r.get("correct") \
                and recipe(r) == mine:
            return k
    return default


ORDER = ("a", "a_v0", "b", "c", "c_v0", "c_v1", "c_w60t08", "c_fisher_s1", "c_fisher_s2",
         "c_fisher_s3", "c_fisher_s5", "c_hessian_s3", "c_kl_s3", "u3", "u3_rerun",
         "c_asym_kl_s3", "u3_asym", "c_kl_s3_qat1350", "u3_qat1350", "c_kl_s3_a346",
         "c_kl_s3_qat3000", "u3_qat3000")
NOTES = {
    "a_v0": "same search and QAT as a, earlier derivation without the expected-cost lower "
            "bound",
    "c_v0": "first SSPS run: layers could be fixed while the budget hinge was active, "
            "one-sided hinge",
    "c_v1": "SSPS without warm start, threshold 0.6, warm-up 20 (two-sided hinge, fill "
            "rule; derivation lower bound min(E, B)): the previously declared c",
    "c_w60t08": "c_v1 with warm-up 60 and threshold 0.8",
    "u3": "uniform W3A4, search phase with one candidate + the same QAT",
    "u3_rerun": "u3 rerun with the same recipe to record per-image predictions (for McNemar)",
}


def _cell(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def summarize(results: dict, args) -> None:
    lines = ["ResNet-20, CIFAR-10 protocol; accuracy on the 1,000 lossless test images "
             "(FP32 91.50 %); val = the 2,000-image JPEG validation split (the protocol's "
             "model-selection split; the architecture steps draw from it, no weight is trained "
             "on it). Search 120 steps + QAT 450 steps (unless the run says otherwise), batch 64, "
             "lr 0.0002, KD weight 0.7 (T=4), 1 CPU thread, first/last layer W8A8 in every "
             "policy, for every run. "
             "Wall-clock seconds were measured on a shared 2-core machine running several "
             "other jobs (load 3-6): compare them only roughly.", ""]
    lines.append("| run | method | budget | test acc. % | val acc. % | avg w bits | size bytes | "
                 "BitOPs | % of BitOPs budget | search s | QAT s | wall s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = [k for k in ORDER if k in results] + sorted(
        k for k in results if k not in ORDER and k not in ("paired", "mem", "mem_v0"))
    for key in keys:
        r = results[key]
        b = ", ".join(f"{k} <= {v:,.6g}" for k, v in r["budget"].items())
        share = (f"{100 * r['bitops'] / r['budget']['bitops']:.1f}"
                 if "bitops" in r["budget"] else "-")
        method = "uniform W3A4" if key.startswith("u3") else r["method"]
        if r.get("weight_scheme", "uniform_symmetric") != "uniform_symmetric":
            method += " (asym. weights)"
        lines.append(f"| {key} | {method} | {b} | {r['accuracy']:.2f} | "
                     f"{_cell(r.get('val_accuracy'), '.2f')} | {r['avg_weight_bits']:.3f} | "
                     f"{r['size_bytes']:,} | {r['bitops']:,} | {share} | "
                     f"{r['search_seconds']:.0f} | {r['qat_seconds']:.0f} | "
                     f"{_cell(r.get('wall_s'), '.0f')} |")
    lines += ["", "Runs:", ""]
    for key in keys:
        r = results[key]
        note = r.get("label") or NOTES.get(key)
        if note and note != key:
            lines.append(f"- {key}: {note}")
        if "weight_bits" in r and key.startswith("c"):
            lines.append(f"  weight bits per layer: "
                         f"{' '.join(str(v) for v in r['weight_bits'].values())}")
        if len(r.get("act_bit_candidates", [4])) > 1:
            lines.append(f"  activation bits per layer: "
                         f"{' '.join(str(v) for v in r['act_bits'].values())}")
    if "a" in results:
        acc = results["a"]["accuracy"]
        lines += ["", f"(a) target >= 90.50 %: measured {acc:.2f} % -> "
                  f"{'met' if acc >= 90.5 else 'MISSED by %.2f points' % (90.5 - acc)}"]
    for part in ("b", "c", "c_asym_kl_s3", "c_kl_s3_qat1350", "c_kl_s3_a346", "c_kl_s3_qat3000"):
        if part not in results:
            continue
        m = results[part]["accuracy"]
        pr = results.get("paired", {}).get(part, {})
        ref = pr.get("reference", "u3")
        u = results[ref]["accuracy"] if ref in results else float("nan")
        pv = pr.get("mcnemar_exact_p")
        sig = "" if pv is None else (
            f", McNemar p = {pv:.3g}" + ("" if pv < 0.05 else ": not significant"))
        also = ""
        if ref == "u3_rerun" and "u3" in results:
            u0 = results["u3"]["accuracy"]
            also = f"; vs the first uniform run (u3) {u0:.2f} %: {m - u0:+.2f} points"
        lines.append(f"({part}) searched {m:.2f} % vs uniform W3A4 ({ref}) {u:.2f} %: "
                     f"{'searched higher' if m > u else 'searched NOT better'} "
                     f"({m - u:+.2f} points, same 1,000 images{sig}{also})")
    if results.get("c", {}).get("selection"):
        lines += ["", f"Choice of the declared c: {results['c']['selection']}"]
    if "paired" in results:
        lines += ["", "Paired comparison on the same 1,000 images (exact McNemar test):", ""]
        for part, r in results["paired"].items():
            ref = r.get("reference", "u3")
            lines.append(f"- {part} vs {ref}: only {part} right {r['only_searched_right']}, "
                         f"only {ref} right {r['only_uniform_right']}, "
                         f"p = {r['mcnemar_exact_p']:.3g}")
    if "mem" in results:
        lines += ["", "Supernet of ResNet-20, 5 weight x 2 activation candidates per layer, batch "
                  f"{args.batch}, peak RSS of the training steps (kernel counter reset before "
                  "them):", "", "| supernet path | s/step | peak RSS MiB | RSS increase in "
                  "training MiB |", "|---|---|---|---|"]
        for r in results["mem"]["rows"]:
            lines.append(f"| {r['path']} | {r['s_per_step']:.2f} | "
                         f"{r['peak_rss_bytes'] / 2**20:.0f} | "
                         f"{r['training_rss_increase_bytes'] / 2**20:.0f} |")
    seeds = seed_summary(results)
    if seeds:
        lines += ["", "Declared c vs uniform W3A4 over seeds (seed = data order, search and QAT; "
                  "450 QAT steps; seed 0 is c_kl_s3 vs u3_rerun):", "",
                  "| seed | searched % | uniform % | searched - uniform | McNemar p |",
                  "|---|---|---|---|---|"]
        for row in seeds["pairs"]:
            lines.append(f"| {row['seed']} | {row['searched']:.2f} | {row['uniform']:.2f} | "
                         f"{row['gap']:+.2f} | {row['mcnemar_exact_p']:.3g} |")
        lines += ["", f"Mean gap {seeds['mean_gap']:+.2f} points (SD {seeds['sd_gap']:.2f}, "
                  f"{seeds['n']} seeds; one-sample t-test p = {seeds['t_test_p']:.3g}); searched "
                  f"higher in {seeds['searched_higher']} of {seeds['n']} seeds. Pooled over the "
                  f"seeds: only searched right {seeds['pooled_only_searched']}, only uniform "
                  f"right {seeds['pooled_only_uniform']}."]
    payload = {"args": vars(args), "results": results, "seed_summary": seeds}
    write_result("search_resnet20", payload, lines)


def seed_summary(results: dict) -> dict | None:
    """Declared c (``c_kl_s3``) vs uniform W3A4 over seeds: per-seed gap, mean, SD, t-test.

    Seed 0 is the pair (``c_kl_s3``, ``u3_rerun``); seed ``s`` > 0 is (``c_kl_s3_seed{s}``,
    ``u3_seed{s}``). Returns None until at least two complete pairs exist.
    """
    from scipy.stats import ttest_1samp

    pairs = [(0, "c_kl_s3", "u3_rerun")] + [
        (int(k.rsplit("seed", 1)[1]), k, f"u3_seed{k.rsplit('seed', 1)[1]}")
        for k in sorted(results) if k.startswith("c_kl_s3_seed")]
    rows = []
    for seed, c_key, u_key in pairs:
        if not (results.get(c_key, {}).get("correct") and results.get(u_key, {}).get("correct")):
            continue
        c, u = results[c_key], results[u_key]
        rows.append({"seed": seed, "searched_run": c_key, "uniform_run": u_key,
                     "searched": c["accuracy"], "uniform": u["accuracy"],
                     "gap": c["accuracy"] - u["accuracy"],
                     **mcnemar(c["correct"], u["correct"])})
    if len(rows) < 2:
        return None
    gaps = torch.tensor([r["gap"] for r in rows], dtype=torch.float64)
    return {"pairs": rows, "n": len(rows), "mean_gap": float(gaps.mean()),
            "sd_gap": float(gaps.std()), "t_test_p": float(ttest_1samp(gaps.tolist(), 0.0).pvalue),
            "searched_higher": int((gaps > 0).sum()),
            "pooled_only_searched": sum(r["only_searched_right"] for r in rows),
            "pooled_only_uniform": sum(r["only_uniform_right"] for r in rows)}


if __name__ == "__main__":
    main()
