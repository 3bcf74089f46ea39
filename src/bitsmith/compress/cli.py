"""``bitsmith compress``: prune + DPQ-quantize a CIFAR model; :func:`register` adds it.

Exit codes follow ``bitsmith.cli``: 0 success, 2 bad input (sparsity, ratio/budget, bits,
unknown model), 3 infeasible budget (cannot be met at this sparsity even at the lowest bits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console

EXIT_BAD_INPUT, EXIT_INFEASIBLE = 2, 3
console = Console()
err_console = Console(stderr=True)

EPILOG = (
    "Examples:\n\n"
    "  bitsmith compress --sparsity 0.75 --ratio 15 --steps 2000 --out runs/dpq\n\n"
    "  bitsmith compress --sparsity 0.5 --budget-kib 120 --epochs 1 --no-rpc "
    "--out runs/dpq50\n\n"
    "  bitsmith compress --sparsity 0 --ratio 8 --steps 300 --out runs/quant-only\n\n"
    "Re-running a command with the same --out resumes from OUT/checkpoints/last.pt "
    "(--no-resume starts over). Writes policy.yaml, compressed.safetensors (the packed "
    "artifact; its payload equals the reported size), result.json and a report run "
    "directory (OUT/report).")


def _parse_bits(text: str) -> tuple[int, ...]:
    from bitsmith.compress.pruning import CompressError

    try:
        bits = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise CompressError(f"--bits must be comma-separated integers, got {text!r}") from None
    return bits


def compress_command(
    model: str = typer.Option("resnet20", help="Pretrained CIFAR-10 model: resnet20 or "
                              "resnet32 (checkpoints from shared/data)."),
    sparsity: float = typer.Option(0.75, help="Final fraction of pruned weights in [0, 1)."),
    ratio: float = typer.Option(15.0, help="Target compression FP32 bytes / compressed bytes "
                                "(>= 1); sets the size budget."),
    budget_kib: float | None = typer.Option(None, help="Size budget in KiB (overrides "
                                            "--ratio)."),
    bits: str = typer.Option("2,3,4,5,6,8", help="Candidate weight bit widths (2..8)."),
    act_bits: int = typer.Option(8, help="Activation bits (0 = float)."),
    scope: str = typer.Option("layer", help="Pruning threshold: 'layer' or 'global'."),
    structured: bool = typer.Option(False, help="Prune whole output channels."),
    two_level: bool = typer.Option(True, help="Per-channel correction factors on top of "
                                   "the coarse pseudo-mean scale."),
    pseudo_mean: bool = typer.Option(True, help="Scale from the survivors' mean (else all "
                                     "weights')."),
    rpc: bool = typer.Option(True, help="Random partial activation quantization while "
                             "fine-tuning."),
    steps: int | None = typer.Option(None, min=1, help="Fine-tuning steps (overrides "
                                     "--epochs)."),
    epochs: int = typer.Option(1, min=0, help="Fine-tuning epochs (0 = one-shot, no "
                               "fine-tuning)."),
    batch_size: int = typer.Option(64, min=1, help="Fine-tuning batch size."),
    lr: float = typer.Option(2e-4, help="AdamW learning rate."),
    distill: float = typer.Option(0.9, help="Weight of distillation from the FP32 model."),
    threads: int = typer.Option(1, min=1, help="torch CPU threads."),
    out: Path = typer.Option(Path("runs/compress"), help="Output folder."),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoints/last.pt if present."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Prune and DPQ-quantize a pretrained CIFAR-10 model under a size budget.

    Fine-tunes on the CIFAR-10 JPEG training set with distillation (the shared training
    loop), reports accuracy on the 1,000 lossless test images and the honest compression
    ratio (surviving-weight codes + bitmask or relative index + scales + biases).
    """
    from bitsmith.compress.pruning import CompressError
    from bitsmith.cost.budget import InfeasibleBudgetError

    try:
        cfg = _config(sparsity, ratio, budget_kib, bits, act_bits, scope, structured,
                      two_level, pseudo_mean, rpc)
        if model not in ("resnet20", "resnet32"):
            raise CompressError(f"--model {model!r}: only the pretrained CIFAR-10 resnet20 "
                                "and resnet32 are available")
        if not (lr > 0 and math.isfinite(lr)) or not 0 <= distill <= 1:
            raise CompressError("--lr must be > 0 and --distill in [0, 1]")
    except CompressError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        summary = _run(model, cfg, steps, epochs, batch_size, lr, distill, threads, out,
                       resume, seed)
    except InfeasibleBudgetError as err:
        err_console.print(f"[red]infeasible:[/red] {err}")
        raise typer.Exit(EXIT_INFEASIBLE) from None
    except CompressError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(
        f"[bold]{model}[/bold]: test accuracy {summary['test_accuracy']:.2f}% (FP32 "
        f"{summary['fp32_test_accuracy']:.2f}%), size {summary['size_bytes']:,} B, "
        f"compression {summary['compression']:.2f}x (file {summary['file_bytes']:,} B, "
        f"{summary['file_compression']:.2f}x), sparsity {summary['sparsity']:.3f}")
    console.print(f"wrote {out}/result.json, {out}/compressed.safetensors, {out}/policy.yaml")


def _config(sparsity: float, ratio: float, budget_kib: float | None, bits: str,
            act_bits: int, scope: str, structured: bool, two_level: bool, pseudo_mean: bool,
            rpc: bool):
    from bitsmith.compress.pipeline import CompressConfig
    from bitsmith.compress.pruning import CompressError

    if budget_kib is not None and not (budget_kib > 0 and math.isfinite(budget_kib)):
        raise CompressError(f"--budget-kib must be a positive size in KiB, got {budget_kib}")
    return CompressConfig(
        sparsity=sparsity, ratio=ratio,
        budget_bytes=None if budget_kib is None else budget_kib * 1024,
        bits=_parse_bits(bits), act_bits=act_bits, scope=scope, structured=structured,
        two_level=two_level, pseudo_mean=pseudo_mean, rpc=rpc)


def _run(model_name: str, cfg, steps: int | None, epochs: int, batch_size: int, lr: float,
         distill: float, threads: int, out: Path, resume: bool, seed: int) -> dict:
    import torch

    from bitsmith.compress.accounting import mask_layouts
    from bitsmith.compress.pipeline import compress_model
    from bitsmith.data import cifar10_protocol, make_loader
    from bitsmith.engine import evaluate
    from bitsmith.export import save_packed
    from bitsmith.models import build_model
    from bitsmith.rundir import RunWriter
    from bitsmith.training import TrainConfig

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    proto = cifar10_protocol(n_calib=512, n_val=1000, seed=seed)
    calib = make_loader(proto.calibration, batch_size=64)
    test = make_loader(proto.test, batch_size=250)
    net = build_model(model_name, pretrained=True).eval()
    train_cfg = None
    train_loader = None
    if steps is not None or epochs > 0:
        train_loader = make_loader(proto.finetune, batch_size=batch_size, shuffle=True,
                                   drop_last=True, seed=seed)
        train_cfg = TrainConfig(
            epochs=max(epochs, 1), max_steps=steps, lr=lr, optimizer="adamw",
            weight_decay=0.0, distill_weight=distill, grad_clip=5.0, seed=seed,
            checkpoint_dir=str(out / "checkpoints"), checkpoint_every=100, resume=resume,
            progress=True)
    result = compress_model(net, calib, train_loader, cfg, train_cfg)
    qmodel = result.model
    fp32_acc = evaluate(net, test).accuracy
    acc = evaluate(qmodel, test).accuracy
    packed = save_packed(qmodel, out / "compressed.safetensors", model_name=model_name,
                         example_inputs=torch.zeros(1, 3, 32, 32))
    qmodel.bitsmith.policy.save(out / "policy.yaml")
    cost = result.cost
    summary = {
        "model": model_name, "config": cfg.to_dict(),
        "train": None if train_cfg is None else train_cfg.to_dict(),
        "fp32_test_accuracy": fp32_acc, "test_accuracy": acc,
        "size_bytes": cost.size_bytes, "fp32_bytes": cost.fp32_bytes,
        "compression": cost.compression, "file_bytes": packed.file_bytes,
        "file_compression": cost.fp32_bytes / packed.file_bytes,
        "packed_payload_bytes": packed.tensor_bytes,
        "payload_equals_cost_model": packed.tensor_bytes == cost.size_bytes,
        "sparsity": result.sparsity, "bits": result.bits, "budget_bytes": result.budget_bytes,
        "events": result.events,
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    run = RunWriter(out / "report", model=model_name, dataset="CIFAR-10",
                    eval_set="test images 0..999 (lossless)", producer="bitsmith compress")
    run.write_layers(qmodel.bitsmith.layer_table)
    run.set_fp32(accuracy=fp32_acc, size_bytes=cost.fp32_bytes)
    run.add_trial("dpq", accuracy=acc, policy=qmodel.bitsmith.policy, source="dpq",
                  size_bytes=cost.size_bytes, compression=cost.compression,
                  avg_weight_bits=cost.avg_weight_bits, sparsity=result.sparsity)
    run.choose("dpq")
    run.write_masks(mask_layouts(qmodel))
    run.write_export([{"name": "packed", "format": "bitsmith.packed/1",
                       "path": str(out / "compressed.safetensors"),
                       "size_bytes": packed.file_bytes, "accuracy": acc}])
    return summary


def register(app: typer.Typer) -> None:
    """Add ``compress`` to ``app``."""
    app.command("compress", epilog=EPILOG)(compress_command)
