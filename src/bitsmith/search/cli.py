"""The ``bitsmith search`` command. Wire it with ``register(app)``.

Exit codes follow ``bitsmith.cli``: 0 ok, 1 unexpected error (e.g. NaN loss), 2 bad input,
3 infeasible budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bitsmith.errors import InputError

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 1, 2, 3
MODELS = ("resnet20", "resnet32", "digits")
console = Console()

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


class SearchInputError(InputError):
    """Bad command-line input (exit code 2)."""


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SearchInputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise SearchInputError(f"{what} is empty")
    return vals


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def load_data(model: str, batch_size: int, seed: int) -> dict[str, Any]:
    """Model and data of a built-in problem (CIFAR-10 protocol for the ResNets).

    ``resnet20``/``resnet32``: pretrained; weights trained on the fine-tuning split,
    architecture on the JPEG validation split, calibration on the lossless training images,
    evaluation on the 1,000 lossless test images. ``digits``: a SmallCNN trained here on
    the sklearn digits train split; architecture on the val split, evaluation on test.
    """
    from bitsmith.data import make_loader

    if model in ("resnet20", "resnet32"):
        from bitsmith.data import cifar10_protocol
        from bitsmith.models import build_model

        proto = cifar10_protocol(n_val=2000, seed=seed)
        return {"model": build_model(model, pretrained=True).eval(),
                "train": make_loader(proto.finetune, batch_size, shuffle=True, seed=seed,
                                     drop_last=True),
                "arch": proto.val, "calib": make_loader(proto.calibration, 128),
                "eval": make_loader(proto.test, 250), "dataset": "CIFAR-10",
                "eval_set": "test images 0..999 (lossless)"}
    if model == "digits":
        import torch

        from bitsmith.data import digits_splits
        from bitsmith.engine import fit
        from bitsmith.models import SmallCNN

        torch.manual_seed(seed)
        sp = digits_splits(seed=seed)
        net = SmallCNN()
        fit(net, make_loader(sp.train, 64, shuffle=True, seed=seed), epochs=20, lr=3e-3,
            weight_decay=1e-4)
        return {"model": net.eval(), "train": make_loader(sp.train, batch_size, shuffle=True,
                                                          seed=seed),
                "arch": sp.val, "calib": make_loader(sp.train, 128),
                "eval": make_loader(sp.test, 256), "dataset": "sklearn digits",
                "eval_set": "test split"}
    raise SearchInputError(f"unknown model {model!r}; use one of {', '.join(MODELS)}")


def register(app: typer.Typer) -> None:
    """Add the ``search`` command to ``app``."""

    @app.command("search", epilog=EPILOG)
    def search_cmd(
        model: str = typer.Option("resnet20", help=f"Built-in problem: {', '.join(MODELS)}."),
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
        first_last: str = typer.Option("int8", help="int8 (fixed W8A8) or search."),
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
                         "measured_kl "
                         "(sensitivity + integer program under the budget), or a "
                         "policy.yaml path."),
        warm_strength: float = typer.Option(3.0, help="Logit advantage of the warm-start "
                                                      "choice (QSS/SSPS)."),
        kd: float = typer.Option(0.7, help="Distillation weight in QAT (0 = off)."),
        uniform_baseline: bool = typer.Option(
            False, help="Also fine-tune the dearest uniform policy within the budget with the "
                        "same recipe and report both (doubles the QAT time)."),
        seed: int = typer.Option(0, help="Random seed."),
        out: Path = typer.Option(Path("runs/search"), help="Run directory."),
        resume: bool = typer.Option(True, help="Resume from OUT/ckpt if present."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        threads: int = typer.Option(0, help="torch threads (0 = torch default)."),
    ) -> None:
        """Search a mixed-precision policy by training (AutoQNN QSS/QPL or SSPS), fine-tune it.

        Writes a run directory (policy.yaml, weights.safetensors, search_layers.json,
        search.jsonl curves, trials.jsonl) that `bitsmith report` and `bitsmith export` read.
        """
        import torch

        from bitsmith.cost.budget import Budget, InfeasibleBudgetError
        from bitsmith.graph.convert import ConversionError
        from bitsmith.policy import PolicyError
        from bitsmith.search.methods import METHODS
        from bitsmith.search.pipeline import SearchSettings, run_search
        from bitsmith.search.supernet import SupernetSpace, SupernetSpaceError
        from bitsmith.training import NonFiniteLossError, TrainConfig

        try:
            if threads > 0:
                torch.set_num_threads(threads)
            if method not in METHODS:
                raise SearchInputError(f"unknown method {method!r}; use one of {METHODS}")
            lut = None
            if latency_ms is not None:
                if latency_table is None:
                    raise SearchInputError("--latency-ms needs --latency-table")
                from bitsmith.export.latency import LatencyTable

                lut = LatencyTable.load(latency_table)
            budget = Budget(size_bytes=None if size_kib is None else size_kib * 1024,
                            bitops=bitops, avg_weight_bits=avg_bits, latency=latency_ms)
            if not budget.items() and act_kib is None:
                raise SearchInputError("give a budget: --avg-bits, --size-kib, --bitops, "
                                       "--latency-ms or --act-kib")
            wb = _ints(w_bits, "--w-bits")
            space = SupernetSpace(weight=tuple((s, b) for s in _names(schemes) for b in wb
                                             if _supports(s, b)),
                                act_bits=_ints(act_bits, "--act-bits"), first_last=first_last)
            space.weight_specs()
            space.act_specs()
            common = dict(lr=lr, weight_decay=0.0, grad_clip=10.0, seed=seed,
                          progress=progress, resume=resume, checkpoint_every=50)
            settings = SearchSettings(
                method=method, budget=budget, space=space,
                search=TrainConfig(max_steps=search_steps, log_every=10, **common),
                qat=TrainConfig(max_steps=max(qat_steps, 1), distill_weight=kd, log_every=20,
                                **common),
                act_budget_bytes=None if act_kib is None else act_kib * 1024,
                method_kw={"arch_lr": arch_lr, "penalty": penalty,
                           **({"threshold": threshold} if method == "ssps" else {})},
                warm_start=_warm_start(warm_start), warm_start_strength=warm_strength,
                uniform_baseline=uniform_baseline)
            data = load_data(model, batch_size, seed)
            outcome = run_search(
                data["model"], data["train"], settings, arch_data=data["arch"],
                calibration=data["calib"], eval_loader=data["eval"], out_dir=out,
                latency=lut, model_name=model, dataset=data["dataset"],
                eval_set=data["eval_set"], run_qat=qat_steps > 0)
        except InfeasibleBudgetError as err:
            console.print(f"[red]infeasible:[/red] {err}")
            raise typer.Exit(EXIT_INFEASIBLE) from None
        except (SearchInputError, SupernetSpaceError, PolicyError, ConversionError,
                FileNotFoundError, ValueError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except NonFiniteLossError as err:
            console.print(f"[red]stopped:[/red] {err}")
            raise typer.Exit(EXIT_ERROR) from None
        from bitsmith.training import dist_info

        if dist_info()[0] == 0:  # under torchrun only rank 0 prints
            _print(outcome, settings, out)


def _warm_start(text: str) -> Any:
    """``--warm-start``: None, a metric of ``WARM_METRICS``, or the Policy of a YAML file."""
    from bitsmith.search.warmstart import WARM_METRICS

    if text.lower() in ("", "none"):
        return None
    if text.lower() in WARM_METRICS:
        return text.lower()
    path = Path(text)
    if not path.is_file():
        raise SearchInputError(f"--warm-start {text!r}: use none, {', '.join(WARM_METRICS)} "
                               "or the path of a policy.yaml")
    from bitsmith.policy import Policy

    return Policy.load(path)


def _supports(scheme: str, bits: int) -> bool:
    """Whether ``scheme`` exists and supports ``bits`` (unknown schemes pass, to be reported)."""
    from bitsmith.schemes import available, get_scheme

    if scheme not in available():
        return True
    s = get_scheme(scheme)
    return s.min_bits <= bits <= s.max_bits


def _print(outcome: Any, settings: Any, out: Path) -> None:
    table = Table(title=f"bitsmith search ({settings.method}): per-layer result")
    for col in ("layer", "weight", "act bits", "p(choice)", "fixed at step"):
        table.add_column(col)
    for r in outcome.derivation.rows:
        table.add_row(r["layer"], r["derived"], str(r["act_bits"]), f"{r['w_prob']:.2f}",
                      "" if r.get("fixed_step") is None else str(r["fixed_step"]))
    console.print(table)
    s = outcome.summary()
    budget = ", ".join(f"{k} <= {v:,.6g}" for k, v in settings.budget.items())
    console.print(f"budget {budget}: size {s['size_bytes']:,} B, BitOPs {s['bitops']:,}, "
                  f"avg weight bits {s['avg_weight_bits']:.3f}"
                  f"{' (repaired by the ILP)' if s['repaired'] else ''}")
    if s["accuracy"] is not None:
        console.print(f"accuracy {s['accuracy']:.2f} % (FP32 {s['fp32_accuracy']:.2f} %)")
    b = s["uniform_baseline"]
    if b is not None and b["label"] is None:
        console.print(f"uniform baseline: none ({b['reason']})")
    elif b is not None and b["accuracy"] is not None and s["accuracy"] is not None:
        gap = s["accuracy"] - b["accuracy"]
        console.print(f"uniform baseline {b['label']} within the same budget: "
                      f"{b['accuracy']:.2f} % (searched {gap:+.2f} points; "
                      f"{'searched better' if gap > 0 else 'uniform as good or better'})")
    console.print(f"search {s['search_seconds']:.0f} s, QAT {s['qat_seconds']:.0f} s; "
                  f"outputs in {out}/")


__all__ = ["register", "load_data", "SearchInputError"]
