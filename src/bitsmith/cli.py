"""The ``bitsmith`` command and its one error boundary.

Exit codes (stable, for scripts): 0 success, 1 unexpected error, 2 bad input
(invalid option, config, policy, model or data; :class:`~bitsmith.errors.InputError`),
3 infeasible budget (:class:`~bitsmith.errors.InfeasibleError`), 130 interrupted.
Every error is one line on stderr naming the input and the fix; ``--debug`` (or
``BITSMITH_DEBUG=1``) adds the traceback.

Any option of any sub-command can come from a YAML config file given with
``--config``: ``{command: {option_name: value}}``; flags on the command line
override it. Example config::

    demo:
      epochs: 10
      out: runs/quick
"""

from __future__ import annotations

import io
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from bitsmith.cli_support import (
    Inputs,
    OptionError,
    ProgressOption,
    add_test_numbers,
    console,
    done,
    print_result,
    with_inputs,
)
from bitsmith.errors import EXIT_ERROR, EXIT_OK, BitsmithError, InfeasibleError
from bitsmith.progress import show_library_log, stage

EXIT_BAD_INPUT, EXIT_INFEASIBLE, EXIT_INTERRUPTED = 2, 3, 130
__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_INFEASIBLE", "EXIT_OK", "app", "main"]


def _fail(ctx: typer.Context, code: int, message: str) -> None:
    """One line on stderr (plus the traceback with --debug), then exit with ``code``."""
    if ctx.params.get("debug") or os.environ.get("BITSMITH_DEBUG") == "1":
        traceback.print_exc()
    typer.echo(message, err=True)
    ctx.exit(code)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings on the command line: ``warning: <message>``, one line on stderr."""
    typer.echo(f"warning: {' '.join(str(message).split())}", err=True)


class BitsmithGroup(TyperGroup):
    """The command line's one error boundary: maps exceptions to exit codes and lines.

    :class:`~bitsmith.errors.BitsmithError` -> its ``exit_code`` (2 bad input, 3
    infeasible, 1 other); a missing or unreadable file -> 2; Ctrl-C -> 130 (a rerun
    resumes); anything else -> 1 with ``unexpected error``. The option parser's own usage
    errors keep click's exit code 2.
    """

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        from bitsmith.scoring import ValidationWarning

        show_library_log()  # e.g. reconstruction's line per layer / block
        warnings.showwarning = _one_line_warning
        warnings.filterwarnings("ignore", category=ValidationWarning)  # print_result says it
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except InfeasibleError as err:
            _fail(ctx, err.exit_code, f"infeasible: {err}")
        except BitsmithError as err:
            _fail(ctx, err.exit_code, f"error: {err}")
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            name = f" {err.filename}" if err.filename else ""
            _fail(ctx, EXIT_BAD_INPUT, f"error: cannot read{name}: {err.strerror or err}; "
                  "check the path")
        except KeyboardInterrupt:
            _fail(ctx, EXIT_INTERRUPTED, "interrupted; run the same command again to resume")
        except Exception as err:  # the boundary: nothing else escapes
            _fail(ctx, EXIT_ERROR, f"unexpected error: {type(err).__name__}: {err} "
                  "(run with --debug for the traceback)")


app = typer.Typer(help="bitsmith: automatic mixed-precision quantization for PyTorch.",
                  cls=BitsmithGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


def load_cli_config(path: Path, ctx: typer.Context) -> dict[str, Any]:
    """Read a ``{command: {option: value}}`` file for click's default_map, strictly
    (:mod:`bitsmith.cli_config`: unknown commands/options and mistyped values are errors)."""
    from bitsmith.cli_config import load_cli_config as load

    return load(path, ctx.command, ctx)


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file of option defaults per command; flags win."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error."),
) -> None:
    """bitsmith: automatic mixed-precision quantization for PyTorch."""
    if config is not None:
        ctx.default_map = load_cli_config(config, ctx)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for results.json and policies."),
    epochs: int = typer.Option(30, min=1, help="Training epochs for the digits CNN."),
    seed: int = typer.Option(0, help="Random seed."),
    tune_trials: int = typer.Option(16, min=0, help="Trials of the short auto-tune (0: skip)."),
    progress: ProgressOption = True,
) -> None:
    """Digits CNN end to end: FP32 vs W8A8, W4A4, mixed and auto-tuned; writes the HTML report.

    Trains a small CNN on scikit-learn's bundled digits (offline), quantizes it with four
    policies and a short XGBoost auto-tune, prints the table and writes a run directory.

    Example: bitsmith demo --out runs/demo
    """
    from bitsmith.demo import print_demo, run_demo
    from bitsmith.report import write_report

    demo_run = run_demo(out, epochs=epochs, seed=seed, tune_trials=tune_trials,
                        progress=progress)
    print_demo(demo_run, console)
    done(f"results written to {out}/results.json")
    done(f"report written to {write_report(out)}")


@app.command()
def schemes() -> None:
    """List the registered quantizer schemes and their properties."""
    from bitsmith.schemes import available, get_scheme

    table = Table(title="quantizer schemes")
    for col in ("name", "bits", "per-channel", "kind", "integer runtime"):
        table.add_column(col)
    for name in available():
        s = get_scheme(name)
        table.add_row(name, f"{s.min_bits}-{s.max_bits}", "yes" if s.per_channel else "no",
                      "range" if s.range_based else "data", "yes" if s.integer_grid else "no")
    console.print(table)


@app.command()
@with_inputs
def layers(
    inputs: Inputs,
    size: int = typer.Option(32, help="Height/width of the random example image (without "
                             "--data)."),
) -> None:
    """Print the LayerTable (quantizable layers, shapes, params, MACs) of a model.

    The model runs once on the first calibration input of --data (token ids, any shape),
    or without --data on a random (1, --channels, --size, --size) image.
    Example: bitsmith layers --model resnet20; bitsmith layers --model net.py:build --data x.npz
    """
    import torch

    from bitsmith.quantize import iter_batches, prepare

    with_data = inputs.data is not None or inputs.calibration_data is not None
    if with_data:
        work = inputs.load(calibration_size=1)
        net, example = work.model, next(iter_batches(work.calibration))[0][:1]
    else:
        net = inputs.resolve_model()
        example = torch.randn(1, inputs.channels or 3, size, size)
    try:
        _, table, report = prepare(net, example)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        if with_data:
            raise
        raise OptionError(
            f"--model {inputs.model}: it does not run on a random float image of shape "
            f"{tuple(example.shape)} ({str(err).splitlines()[0]}); give --data with real "
            "inputs (token ids, other shapes) or set --size / --channels") from None
    console.print(report.summary())
    console.print(table.format())


@app.command("autoquantize")
@with_inputs
def autoquantize_command(
    inputs: Inputs,
    avg_bits: float | None = typer.Option(None, help="Budget: mean weight bits."),
    size_kib: float | None = typer.Option(None, help="Budget: model size in KiB."),
    bitops: float | None = typer.Option(None, help="Budget: BitOPs per example."),
    tolerance: float = typer.Option(1.0, help="Without a budget: the smallest policy within "
                                    "this many points of FP32 on the validation data."),
    method: str = typer.Option("auto", help="auto (sensitivity + integer program warm start, "
                               "then a short tune), tune, ilp, search, compress."),
    trials: int = typer.Option(24, min=1, help="Tuner trials (auto, tune)."),
    out: Path = typer.Option(Path("runs/autoquantize"), help="Run directory."),
    progress: ProgressOption = True,
) -> None:
    """One command: quantize a model with mixed precision under a budget (or a tolerance).

    The result is chosen on the validation data by the stated rule; test accuracy is
    reported, never chosen on (docs/overview.md, "One contract").

    Example: bitsmith autoquantize --model net.py:build --checkpoint net.pt --data photos/
    --avg-bits 4 --out runs/mine
    """
    from bitsmith.auto import autoquantize
    from bitsmith.cost import Budget

    limits = {"avg_weight_bits": avg_bits, "bitops": bitops,
              "size_bytes": None if size_kib is None else size_kib * 1024}
    budget = Budget(**limits) if any(v is not None for v in limits.values()) else None
    with stage(f"loading {inputs.model}", progress):
        work = inputs.load()
    train = (work.loader("train", 64, shuffle=True, seed=inputs.seed, drop_last=True)
             if method in ("search", "compress") else None)
    result = autoquantize(work.model, work.data.calibration, work.data.validation,
                          budget=budget, tolerance=tolerance, method=method,
                          evaluate=inputs.evaluate(work), out_dir=out, trials=trials,
                          train_data=train, progress=progress)
    if work.test is not None:
        with stage("scoring on the test set", progress):
            add_test_numbers(result, work.model, work.test, work.eval_set)
    print_result(result)


def _register_subcommands() -> None:
    """Add the sub-commands that live next to their method (tune, analyze, export, ...)."""
    from bitsmith.analyze.cli import register as register_analyze
    from bitsmith.compress.cli import register as register_compress
    from bitsmith.export.cli import register as register_export
    from bitsmith.report.cli import register as register_report
    from bitsmith.search.cli import register as register_search
    from bitsmith.tune.cli import register as register_tune

    for register in (register_tune, register_analyze, register_search, register_compress,
                     register_export, register_report):
        register(app)


_register_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    try:
        app(args=argv, prog_name="bitsmith")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_ERROR)
    return EXIT_OK


def run() -> None:  # pragma: no cover - console-script wrapper
    """Console script: ``sys.exit(main())``. Standard output is line-buffered even off a
    terminal (a log file, a pipe), so that each result line arrives when it is printed."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
