"""The ``bitsmith`` command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="bitsmith: automatic mixed-precision quantization for PyTorch.",
                  no_args_is_help=True, add_completion=False)
console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for results.json and policies."),
    epochs: int = typer.Option(30, min=1, help="Training epochs for the digits CNN."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Train a small CNN on the bundled digits and compare FP32, W8A8, W4A4 and a mixed policy.

    Example: bitsmith demo --out runs/demo
    """
    from bitsmith.demo import run_demo

    rows = run_demo(out, epochs=epochs, seed=seed, log=console.print)
    table = Table(title="bitsmith demo: SmallCNN on sklearn digits (360 test images)")
    for col in ("policy", "accuracy %", "size", "compression", "BitOPs", "avg w bits"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(r.name, f"{r.accuracy:.2f}", f"{r.size_bytes / 1024:.1f} KiB",
                      f"{r.compression:.1f}x", f"{r.bitops / 1e6:.1f} M",
                      f"{r.avg_weight_bits:.2f}")
    console.print(table)
    console.print(f"results written to {out}/results.json")


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
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    _, table, report = prepare(net, torch.randn(1, channels, size, size))
    console.print(report.summary())
    console.print(table.format())


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
