"""The ``bitsmith search`` command. Wire it with ``register(app)``.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 ok, 1 unexpected error (e.g. NaN
loss), 2 bad input, 3 infeasible budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bitsmith.cli_support import (
    FirstLastOption,
    Inputs,
    OptionError,
    ProgressOption,
    ThreadsOption,
    add_test_numbers,
    choice,
    console,
    done,
    parse_ints,
    parse_names,
    print_result,
    set_threads,
    with_inputs,
)
from bitsmith.progress import stage

METHODS = ("qss", "qpl", "ssps")

EPILOG = """Examples:

  bitsmith search --model resnet20 --method qpl --avg-bits 4 --act-bits 4 --out runs/s-a

  bitsmith search --model resnet20 --method qss --size-kib 105 --w-bits 2,3,4,5,6 \\
      --schemes uniform_symmetric,pot --search-steps 300 --qat-steps 2000 --out runs/s-b

  bitsmith search --model resnet20 --method ssps --bitops 5.1e8 --out runs/s-c

  bitsmith search --model resnet20 --method ssps --bitops 5.1e8 --warm-start fisher \
      --warm-strength 3 --out runs/s-c-ws

  bitsmith search --model digits --method ssps --avg-bits 3 --out runs/digits

  torchrun --nproc_per_node 2 -m bitsmith.cli search --model digits --avg-bits 3 ...

A rerun with the same --out resumes from the checkpoints in OUT/ckpt (--no-resume starts
over). Options can also come from the --config YAML of the bitsmith command
(``search: {method: ssps, avg_bits: 3}``).
"""


@with_inputs
def search_command(
    inputs: Inputs,
    method: str = typer.Option("qss", help="qss (scheme search), qpl (learnable bits), "
                                           "ssps (single path, sequential)."),
    avg_bits: float = typer.Option(None, help="Budget: mean weight bits (all layers)."),
    size_kib: float = typer.Option(None, help="Budget: model size in KiB (cost model)."),
    bitops: float = typer.Option(None, help="Budget: BitOPs per example."),
    latency_ms: float = typer.Option(None, help="Budget: latency in ms from --latency-table."),
    latency_table: Path = typer.Option(None, help="Latency LUT JSON (bitsmith export "
                                                  "latency)."),
    act_kib: float = typer.Option(None, help="Budget: peak input activation KiB/example."),
    w_bits: str = typer.Option("2,3,4,5,6,8", help="Weight bit candidates."),
    schemes: str = typer.Option("uniform_symmetric",
                                help="Weight schemes (comma list; QSS searches them)."),
    act_bits: str = typer.Option("4", help="Activation bit candidates."),
    first_last: FirstLastOption = "int8",
    search_steps: int = typer.Option(300, min=1, help="Search steps (weights + arch)."),
    qat_steps: int = typer.Option(1000, min=0, help="QAT fine-tuning steps (0 = none)."),
    batch_size: int = typer.Option(64, min=1, help="Batch size per process."),
    lr: float = typer.Option(2e-4, help="SGD learning rate of weights (BN is folded: "
                                        "keep it small)."),
    arch_lr: float = typer.Option(0.05, help="Adam learning rate of arch parameters."),
    penalty: float = typer.Option(2.0, help="Weight of the budget hinge loss."),
    threshold: float = typer.Option(0.8, help="SSPS certainty to fix a layer."),
    warm_start: str = typer.Option(
        "none", help="Start the architecture at a policy: none, fisher, hessian or "
                     "measured_kl (sensitivity + integer program under the budget), or a "
                     "policy.yaml path."),
    warm_strength: float = typer.Option(3.0, help="Logit advantage of the warm-start "
                                                  "choice (QSS/SSPS)."),
    kd: float = typer.Option(0.7, help="Distillation weight in QAT (0 = off)."),
    uniform_baseline: bool = typer.Option(
        False, help="Also fine-tune the dearest uniform policy within the budget with the "
                    "same recipe and report both (doubles the QAT time)."),
    out: Path = typer.Option(Path("runs/search"), help="Run directory."),
    resume: bool = typer.Option(True, help="Resume from OUT/ckpt if present."),
    progress: ProgressOption = True,
    threads: ThreadsOption = 0,
) -> None:
    """Search a mixed-precision policy by training (AutoQNN QSS/QPL or SSPS), fine-tune it.

    Writes a run directory (policy.yaml, weights.safetensors, search_layers.json,
    search.jsonl curves, trials.jsonl) that `bitsmith report` and `bitsmith export` read.
    The searched policy is scored on the validation data; test accuracy is reported.
    """
    from bitsmith.cost import Budget
    from bitsmith.search.pipeline import SearchConfig, search
    from bitsmith.search.supernet import SupernetSpace
    from bitsmith.training import TrainConfig, dist_info

    set_threads(threads)
    choice(method, "--method", METHODS)
    if latency_ms is not None and latency_table is None:
        raise OptionError("--latency-ms needs --latency-table")
    budget = Budget(size_bytes=None if size_kib is None else size_kib * 1024, bitops=bitops,
                    avg_weight_bits=avg_bits, latency=latency_ms)
    if not budget.items() and act_kib is None:
        raise OptionError("give a budget: --avg-bits, --size-kib, --bitops, --latency-ms or "
                          "--act-kib")
    wb = parse_ints(w_bits, "--w-bits")
    space = SupernetSpace(weight=tuple((sc, b) for sc in parse_names(schemes, "--schemes")
                                       for b in wb if _supports(sc, b)),
                          act_bits=parse_ints(act_bits, "--act-bits"), first_last=first_last)
    space.weight_specs()
    space.act_specs()
    seed = inputs.seed
    common: dict[str, Any] = dict(lr=lr, weight_decay=0.0, grad_clip=10.0, seed=seed,
                                  progress=progress, resume=resume, checkpoint_every=50)
    cfg = SearchConfig(
        method=method, budget=budget, space=space,  # type: ignore[arg-type]  # choice()d
        search=TrainConfig(max_steps=search_steps, log_every=10, **common),
        qat=TrainConfig(max_steps=max(qat_steps, 1), distill_weight=kd, log_every=20,
                        **common),
        run_qat=qat_steps > 0, act_budget_bytes=None if act_kib is None else act_kib * 1024,
        method_kw={"arch_lr": arch_lr, "penalty": penalty,
                   **({"threshold": threshold} if method == "ssps" else {})},
        warm_start=_warm_start(warm_start), warm_start_strength=warm_strength,
        uniform_baseline=uniform_baseline, latency_table=latency_table)
    with stage(f"loading {inputs.model}", progress):
        work = inputs.load(validation_size=2000, epochs=20)
    cfg = cfg.replace(labels={"model": work.name, "dataset": work.dataset})
    train = work.loader("train", batch_size, shuffle=True, seed=seed, drop_last=True)
    result = search(work.model, work.calibration, work.data.validation,
                    evaluate=inputs.evaluate(work), config=cfg, out_dir=out, train_data=train)
    if dist_info()[0] != 0:  # under torchrun only rank 0 scores the test set and prints
        return
    if work.test is not None:
        with stage("scoring on the test set", progress):
            add_test_numbers(result, work.model, work.test, work.eval_set)
    _print(result, cfg)


def register(app: typer.Typer) -> None:
    """Add the ``search`` command to ``app``."""
    app.command("search", epilog=EPILOG)(search_command)


def _warm_start(text: str) -> Any:
    """``--warm-start``: None, a metric of ``WARM_METRICS``, or the Policy of a YAML file."""
    from bitsmith.search.warmstart import WARM_METRICS

    if text.lower() in ("", "none"):
        return None
    if text.lower() in WARM_METRICS:
        return text.lower()
    path = Path(text)
    if not path.is_file():
        raise OptionError(f"--warm-start {text!r}: use none, {', '.join(WARM_METRICS)} or "
                          "the path of a policy.yaml")
    from bitsmith.policy import Policy

    return Policy.load(path)


def _supports(scheme: str, bits: int) -> bool:
    """Whether ``scheme`` exists and supports ``bits`` (unknown schemes pass, to be reported)."""
    from bitsmith.schemes import available, get_scheme

    if scheme not in available():
        return True
    s = get_scheme(scheme)
    return s.min_bits <= bits <= s.max_bits


def _print(result: Any, cfg: Any) -> None:
    o = result.details
    table = Table(title=f"bitsmith search ({cfg.method}): per-layer result")
    for col in ("layer", "weight", "act bits", "p(choice)", "fixed at step"):
        table.add_column(col)
    for r in o.derivation.rows:
        table.add_row(r["layer"], r["derived"], str(r["act_bits"]), f"{r['w_prob']:.2f}",
                      "" if r.get("fixed_step") is None else str(r["fixed_step"]))
    console.print(table)
    s = result.summary
    done(f"budget {cfg.budget.describe()}: size {s['cost']['size_bytes']:,} B, BitOPs "
         f"{s['cost']['bitops']:,}, avg weight bits {s['cost']['avg_weight_bits']:.3f}"
         f"{' (repaired by the ILP)' if s['repaired'] else ''}")
    b = s["uniform_baseline"]
    if b is not None and b["label"] is None:
        done(f"uniform baseline: none ({b['reason']})")
    elif b is not None and b["accuracy"] is not None and o.accuracy is not None:
        gap = o.accuracy - b["accuracy"]
        done(f"uniform baseline {b['label']} within the same budget: {b['accuracy']:.2f} % "
             f"validation (searched {gap:+.2f} points; "
             f"{'searched better' if gap > 0 else 'uniform as good or better'})")
    if o.metric_error:
        done(f"the searched policy could not be scored: {o.metric_error}")
    done(f"search {s['search_seconds']:.0f} s, QAT {s['qat_seconds']:.0f} s")
    print_result(result)


__all__ = ["register"]
