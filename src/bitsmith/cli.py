"""The ``bitsmith`` command.

Exit codes (stable, for scripts): 0 success, 1 unexpected error, 2 bad input
(invalid option, config, policy or data), 3 infeasible budget.

Any option of any sub-command can come from a YAML config file given with
``--config``: ``{command: {option_name: value}}``; flags on the command line
override it. Example config::

    demo:
      epochs: 10
      out: runs/quick
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3

app = typer.Typer(help="bitsmith: automatic mixed-precision quantization for PyTorch.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def load_cli_config(path: Path) -> dict[str, Any]:
    """Read a ``{command: {option: value}}`` YAML file (safe loader) for click's default_map."""
    if not path.is_file():
        raise typer.BadParameter(f"config file {path} does not exist", param_hint="--config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise typer.BadParameter(f"{path} is not valid YAML: {err}",
                                 param_hint="--config") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise typer.BadParameter(
            f"{path} must map command names to option mappings, e.g. 'demo: {{epochs: 5}}'",
            param_hint="--config")
    return {cmd: {k.replace("-", "_"): v for k, v in opts.items()} for cmd, opts in data.items()}


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file of option defaults per command; flags win."),
) -> None:
    """bitsmith: automatic mixed-precision quantization for PyTorch."""
    if config is not None:
        ctx.default_map = load_cli_config(config)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for results.json and policies."),
    epochs: int = typer.Option(30, min=1, help="Training epochs for the digits CNN."),
    seed: int = typer.Option(0, help="Random seed."),
    tune_trials: int = typer.Option(16, min=0, help="Trials of the short auto-tune (0: skip)."),
) -> None:
    """Digits CNN end to end: FP32 vs W8A8, W4A4, mixed and auto-tuned; writes the HTML report.

    Trains a small CNN on scikit-learn's bundled digits (offline), quantizes it with four
    policies and a short XGBoost auto-tune, prints the table and writes a run directory.

    Example: bitsmith demo --out runs/demo
    """
    from bitsmith.demo import run_demo

    rows = run_demo(out, epochs=epochs, seed=seed, log=console.print, tune_trials=tune_trials)
    table = Table(title="bitsmith demo: SmallCNN on sklearn digits (360 test images)")
    for col in ("policy", "accuracy %", "size", "compression", "BitOPs", "avg w bits"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(r.name, f"{r.accuracy:.2f}", f"{r.size_bytes / 1024:.1f} KiB",
                      f"{r.compression:.1f}x", f"{r.bitops / 1e6:.1f} M",
                      f"{r.avg_weight_bits:.2f}")
    console.print(table)
    console.print(f"results written to {out}/results.json")
    from bitsmith.report import write_report

    console.print(f"report written to {write_report(out)}")


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
def layers(
    model: str = typer.Argument(..., help="Model name, e.g. resnet20 or torchvision:resnet18."),
    size: int = typer.Option(32, help="Input height/width of the example input."),
    channels: int = typer.Option(3, help="Input channels."),
) -> None:
    """Print the LayerTable (quantizable layers, shapes, params, MACs) of a built-in model.

    Example: bitsmith layers resnet20
    """
    import torch

    from bitsmith.models import build_model
    from bitsmith.quantize import prepare

    try:
        net = build_model(model)
    except (KeyError, ValueError, ImportError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    _, table, report = prepare(net, torch.randn(1, channels, size, size))
    console.print(report.summary())
    console.print(table.format())


def _register_subcommands() -> None:
    """Add the sub-commands that live next to their method (tune, export, bench, analyze, ...)."""
    from bitsmith.analyze.cli import register as register_analyze
    from bitsmith.compress.cli import register as register_compress
    from bitsmith.export.cli import register as register_export
    from bitsmith.report.cli import register as register_report
    from bitsmith.search.cli import register as register_search
    from bitsmith.tune.cli import register as register_tune

    for register in (register_tune, register_analyze, register_export, register_report,
                     register_compress, register_search):
        register(app)


_register_subcommands()


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from bitsmith.export.errors import ArtifactError, ExportError
    from bitsmith.graph import ConversionError
    from bitsmith.policy import PolicyError
    from bitsmith.quantize import CalibrationError
    from bitsmith.rundir import RunDirError
    from bitsmith.tune.errors import TuneError

    return (PolicyError, CalibrationError, ConversionError, ExportError, ArtifactError,
            RunDirError, TuneError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map bitsmith's errors to the documented exit codes."""
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return EXIT_ERROR
    except _bad_input_errors() as err:
        err_console.print(f"[red]error:[/red] {err}")
        return EXIT_BAD_INPUT
    except Exception as err:
        if callable(getattr(err, "show", None)) and hasattr(err, "exit_code"):
            err.show()  # a usage error from the option parser
            return EXIT_BAD_INPUT
        if type(err).__name__.startswith("Infeasible"):
            err_console.print(f"[red]infeasible:[/red] {err}")
            return EXIT_INFEASIBLE
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run() -> None:  # pragma: no cover - console-script wrapper
    """Console script: ``sys.exit(main())``."""
    sys.exit(main())
