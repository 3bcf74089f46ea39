"""``bitsmith export`` and ``bitsmith bench``; :func:`register` adds them to the main app.

Exit codes follow ``bitsmith.cli``: 0 success, 2 bad input (unknown model, bad policy,
a model or policy the formats cannot hold, unreadable ONNX file).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

EXIT_BAD_INPUT = 2
PRESETS = ("w8a8", "w8a8-reduced")
console = Console()
err_console = Console(stderr=True)


def _bad_input() -> tuple[type[BaseException], ...]:
    from bitsmith.export.errors import ArtifactError, ExportError
    from bitsmith.graph import ConversionError
    from bitsmith.policy import PolicyError
    from bitsmith.quantize import CalibrationError

    return (ExportError, ArtifactError, PolicyError, CalibrationError, ConversionError,
            KeyError, FileNotFoundError)


def _fail(err: BaseException) -> typer.Exit:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    err_console.print(f"[red]error:[/red] {msg}")
    return typer.Exit(EXIT_BAD_INPUT)


def _policy(spec: str, names: list[str]):
    from bitsmith.policy import Policy, QSpec

    if spec in PRESETS:
        weight = QSpec("uniform_symmetric", 8, "channel", reduced_range=spec.endswith("reduced"))
        return Policy.uniform(names, weight, QSpec("uniform_asymmetric", 8))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"policy {spec!r} is neither a preset {PRESETS} nor a file")
    return Policy.load(path)


def _data(kind: str, n_calib: int, size: int, channels: int):
    """(calibration loader, evaluation loader)."""
    import torch

    from bitsmith.data import cifar10_protocol, make_loader

    if kind == "cifar10":
        proto = cifar10_protocol(n_calib=n_calib)
        return (make_loader(proto.calibration, batch_size=64),
                make_loader(proto.test, batch_size=250))
    if kind == "random":
        gen = torch.Generator().manual_seed(0)
        calib = [torch.randn(min(64, n_calib), channels, size, size, generator=gen)
                 for _ in range(max(1, n_calib // 64))]
        evaluation = [torch.randn(64, channels, size, size, generator=gen) for _ in range(2)]
        return calib, evaluation
    raise typer.BadParameter(f"unknown data {kind!r}; use cifar10 or random", param_hint="--data")


def export_command(
    model: str = typer.Argument(..., help="Model name, e.g. resnet20."),
    policy: str = typer.Option("w8a8", help=f"Policy file (.yaml/.json) or preset {PRESETS}."),
    out: Path = typer.Option(Path("runs/export"), help="Output folder."),
    pretrained: bool = typer.Option(False, help="Load pretrained weights (resnet20/32)."),
    data: str = typer.Option("cifar10", help="cifar10 (calibration + 1,000 test images) or "
                                              "random."),
    calib: int = typer.Option(512, min=1, help="Calibration images."),
    size: int = typer.Option(32, min=8, help="Input height/width (random data)."),
    channels: int = typer.Option(3, min=1, help="Input channels (random data)."),
    batch: list[int] = typer.Option([1, 64], help="Batch sizes to time (repeatable)."),
    runs: int = typer.Option(200, min=3, help="Timed rounds at small batches."),
    runs_large: int = typer.Option(30, min=3, help="Timed rounds at batches above 8."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime intra-op threads."),
    integer_residuals: bool = typer.Option(True, help="Run residual adds / pooling in int8."),
) -> None:
    """Quantize MODEL with POLICY, export ONNX (QDQ) + packed artifact, check and time them.

    Writes fp32.onnx, quantized.onnx, model.safetensors, summary.json and summary.md.
    Example: bitsmith export resnet20 --pretrained --policy w8a8 --out runs/r20
    """
    from bitsmith.export.pipeline import deploy
    from bitsmith.models import build_model
    from bitsmith.quantize import collect_stats, prepare, quantize

    try:
        kwargs = {"pretrained": True} if pretrained else {}
        net = build_model(model, **kwargs).eval()
        calib_data, eval_data = _data(data, calib, size, channels)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=err_console, transient=True) as progress:
            task = progress.add_task("calibrating", total=None)

            def log(msg: str) -> None:
                progress.update(task, description=msg)

            stats = collect_stats(net, calib_data)
            _, table, _ = prepare(net, stats.example_inputs)
            pol = _policy(policy, table.names)
            log("quantizing")
            qmodel = quantize(net, pol, calibration=stats)
            summary = deploy(net, qmodel, out, example_inputs=stats.example_inputs,
                             calibration=calib_data, evaluation=eval_data, model_name=model,
                             model_kwargs={}, batches=batch, runs=runs, runs_large=runs_large,
                             threads=threads, integer_residuals=integer_residuals, log=log)
    except _bad_input() as err:
        raise _fail(err) from None
    console.print(summary.to_markdown())
    console.print(f"written to {out}/ (summary.json, summary.md)")


def bench_command(
    models: list[Path] = typer.Argument(..., help="ONNX files; the first is the baseline."),
    batch: list[int] = typer.Option([1, 64], help="Batch sizes (repeatable)."),
    runs: int = typer.Option(200, min=3, help="Timed rounds at batches up to 8."),
    runs_large: int = typer.Option(30, min=3, help="Timed rounds at batches above 8."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime intra-op threads."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
) -> None:
    """Latency and throughput of ONNX models, interleaved medians at fixed threads.

    Example: bitsmith bench runs/r20/fp32.onnx runs/r20/quantized.onnx --batch 1 --batch 64
    """
    import onnx

    from bitsmith.export.pipeline import time_models

    shapes = []
    for path in models:
        if not path.is_file():
            raise _fail(FileNotFoundError(f"{path} does not exist"))
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as err:  # noqa: BLE001 - protobuf decode errors vary
            raise _fail(ValueError(f"{path} is not a readable ONNX model: {err}")) from None
        dims = graph.input[0].type.tensor_type.shape.dim[1:]
        if any(not d.dim_value for d in dims):
            raise _fail(ValueError(f"{path}: only the batch dimension may be symbolic"))
        shapes.append(tuple(d.dim_value for d in dims))
    if len(set(shapes)) != 1:
        raise _fail(ValueError(f"the models take different input shapes: {shapes}"))
    with Progress(SpinnerColumn(), TextColumn("timing {task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        progress.add_task(", ".join(p.name for p in models), total=None)
        results = time_models(models, shapes[0], batch, runs, threads, runs_large)
    table = Table(title=f"ONNX Runtime CPU, {threads} threads, interleaved medians")
    for col in ("model", "batch", "median ms", "p10-p90 ms", "items/s", "speedup"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for b, rows in results.items():
        for path, r in zip(models, rows):
            table.add_row(path.name, str(b), f"{r['median_ms']:.3f}",
                          f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}", f"{r['throughput_per_s']:.0f}",
                          f"{rows[0]['median_ms'] / r['median_ms']:.2f}x")
    console.print(table)
    if json_out is not None:
        payload = {"threads": threads, "models": [str(p) for p in models],
                   "results": {str(b): rows for b, rows in results.items()}}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``export`` and ``bench`` commands to ``app``."""
    app.command("export")(export_command)
    app.command("bench")(bench_command)
