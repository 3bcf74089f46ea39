"""The ``bitsmith analyze`` pipeline: sensitivities, allocations at average-bit budgets,
evaluation against uniform policies, all written into a run directory with its report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bitsmith.allocation.candidates import DEFAULT_BITS, bit_candidates
from bitsmith.allocation.ilp import Allocation, allocate, size_budget
from bitsmith.allocation.scores import Sensitivity
from bitsmith.analyze.workloads import Workload
from bitsmith.cost.budget import Budget
from bitsmith.engine import evaluate
from bitsmith.policy import Policy, QSpec
from bitsmith.quantize import collect_stats, prepare, quantize
from bitsmith.sensitivity.fisher import estimate_fisher
from bitsmith.sensitivity.hessian import estimate_hessian
from bitsmith.sensitivity.measured import measure_sensitivity

METHODS = ("measured", "hessian", "fisher")


@dataclass
class AnalysisResult:
    """What :func:`run_analysis` produced (all of it is also in ``run_dir``)."""

    run_dir: Path
    sensitivity: Sensitivity
    allocations: dict[float, Allocation] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def run_analysis(work: Workload, out_dir: str | Path, *, bits: Sequence[int] = DEFAULT_BITS,
                 methods: Sequence[str] = METHODS, avg_bits: Sequence[float] = (4.0, 3.0),
                 metric: str | None = None,
                 weight: QSpec = QSpec("uniform_symmetric", 4, "channel"),
                 act: QSpec | None = QSpec("uniform_asymmetric", 8), hessian_iters: int = 32,
                 hessian_images: int = 256, progress: bool = False,
                 log: Callable[[str], None] = print, report: bool = True) -> AnalysisResult:
    """Analyse ``work``'s model and write a ``bitsmith.run/1`` directory.

    Steps: calibration statistics (once) -> sensitivities by ``methods`` on the val
    loader -> for each average weight-bit budget ``b``: the uniform policy at ``b``
    bits and the integer-program allocation with the same size, both evaluated on
    the test loader (reported, not used to decide) -> the allocation of the first
    budget is the chosen policy -> report.

    Args:
        metric: sensitivity score the allocation minimises (default ``measured_kl``
            when measured, else the first estimate).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; use some of {METHODS}")
    from bitsmith.report import write_report
    from bitsmith.rundir import RunWriter

    stats = collect_stats(work.model, work.calibration)
    _, table, _ = prepare(work.model, stats.example_inputs)
    space = bit_candidates(table, weight, bits, act)
    zeros = {n: [0.0] * len(space[n]) for n in space}
    for b in avg_bits:  # fail fast: an infeasible budget before the expensive analysis
        allocate(space, zeros, Budget(size_bytes=size_budget(space, b)))
    parts = []
    if "measured" in methods:
        log(f"measured sensitivity: {space.size} (layer, bits) pairs")
        parts.append(measure_sensitivity(work.model, space, work.val, calibration=stats,
                                         progress=progress))
    if "hessian" in methods:
        parts.append(estimate_hessian(work.model, space, work.val, n_iter=hessian_iters,
                                      max_examples=hessian_images, progress=progress))
    if "fisher" in methods:
        parts.append(estimate_fisher(work.model, space, work.val, progress=progress))
    sens = parts[0]
    for p in parts[1:]:
        sens = sens.merge(p)
    metric = metric or ("measured_kl" if "measured_kl" in sens.metrics else sens.metrics[0])
    for m in sens.metrics:
        log(f"  {m}: {sens.seconds[m]:.1f} s")

    run = RunWriter(out_dir, model=work.name, dataset=work.dataset, eval_set=work.eval_set,
                    producer="bitsmith analyze", notes={"allocation_metric": metric})
    run.write_layers(table)
    run.write_sensitivity(sens)
    fp32 = evaluate(work.model, work.test).accuracy
    run.set_fp32(accuracy=fp32)
    result = AnalysisResult(Path(out_dir), sens)
    result.accuracies["FP32"] = fp32
    run.add_trial("FP32", policy=Policy({}), accuracy=fp32, source="float")

    def score(name: str, policy: Policy, source: str) -> None:
        acc = evaluate(quantize(work.model, policy, calibration=stats), work.test).accuracy
        result.accuracies[name] = acc
        run.add_trial(name, policy=policy, accuracy=acc, source=source)
        log(f"  {name}: {acc:.2f}%")

    first = None
    for b in avg_bits:
        if float(b).is_integer() and int(b) in bits:
            uni = Policy.uniform(table.names, weight.replace(bits=int(b)), act)
            score(f"uniform W{int(b)}", uni, "uniform")
        alloc = allocate(space, sens, Budget(size_bytes=size_budget(space, b)), metric=metric)
        result.allocations[float(b)] = alloc
        name = f"ILP {b:g}-bit size ({metric})"
        score(name, alloc.policy, "ilp")
        first = first or name
    if first is not None:
        run.choose(first)
    else:
        run.choose("FP32")
    if report:
        result.report = write_report(out_dir)
    return result

