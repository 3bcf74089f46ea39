"""``bitsmith compress``: prune + DPQ-quantize a CIFAR model; :func:`register` adds it.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input (sparsity,
ratio/budget, bits, unknown model), 3 infeasible budget (cannot be met at this sparsity even
at the lowest bits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from bitsmith.cli_support import (
    Inputs,
    ProgressOption,
    add_test_numbers,
    done,
    packed_model_args,
    parse_ints,
    print_result,
    set_threads,
    with_inputs,
)
from bitsmith.compress.pruning import CompressError
from bitsmith.progress import stage

EPILOG = (
    "Examples:\n\n"
    "  bitsmith compress --sparsity 0.75 --ratio 15 --steps 2000 --out runs/dpq\n\n"
    "  bitsmith compress --sparsity 0.5 --budget-kib 120 --epochs 1 --no-rpc "
    "--out runs/dpq50\n\n"
    "  bitsmith compress --sparsity 0 --ratio 8 --steps 300 --out runs/quant-only\n\n"
    "Re-running a command with the same --out resumes from OUT/checkpoints/last.pt "
    "(--no-resume starts over). Writes policy.yaml, compressed.safetensors (the packed "
    "artifact; its payload equals the reported size), result.json and a report run "
    "directory (OUT).")


@with_inputs
def compress_command(
    inputs: Inputs,
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
    out: Path = typer.Option(Path("runs/compress"), help="Run directory."),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoints/last.pt if present."),
    progress: ProgressOption = True,
) -> None:
    """Prune and DPQ-quantize a model under a size budget.

    Fine-tunes on the training data with distillation (the shared training loop; for the
    built-in CIFAR-10 models the JPEG training set), scores the result on the validation
    data, reports test accuracy and the honest compression ratio (surviving-weight codes +
    bitmask or relative index + scales + biases).
    """
    from bitsmith.compress.pipeline import CompressConfig, compress
    from bitsmith.training import TrainConfig

    if budget_kib is not None and not (budget_kib > 0 and math.isfinite(budget_kib)):
        raise CompressError(f"--budget-kib must be a positive size in KiB, got {budget_kib}")
    if not (lr > 0 and math.isfinite(lr)) or not 0 <= distill <= 1:
        raise CompressError("--lr must be > 0 and --distill in [0, 1]")
    seed = inputs.seed
    train_cfg = None
    if steps is not None or epochs > 0:
        train_cfg = TrainConfig(
            epochs=max(epochs, 1), max_steps=steps, lr=lr, optimizer="adamw",
            weight_decay=0.0, distill_weight=distill, grad_clip=5.0, seed=seed,
            checkpoint_dir=str(out / "checkpoints"), checkpoint_every=100, resume=resume,
            progress=progress)
    cfg = CompressConfig(
        sparsity=sparsity, ratio=ratio,
        budget_bytes=None if budget_kib is None else budget_kib * 1024,
        bits=parse_ints(bits, "--bits"), act_bits=act_bits, scope=scope, structured=structured,
        two_level=two_level, pseudo_mean=pseudo_mean, rpc=rpc, train=train_cfg,
        progress=progress)
    set_threads(threads)
    with stage(f"loading {inputs.model}", progress):
        work = inputs.load(calibration_size=512, validation_size=1000)
    cfg = cfg.replace(labels={"model": work.name, "dataset": work.dataset})
    train_loader = None if train_cfg is None else work.loader(
        "train", batch_size, shuffle=True, seed=seed, drop_last=True)
    result = compress(work.model, work.loader("calibration", 64), work.validation,
                      evaluate=inputs.evaluate(work), config=cfg, out_dir=out,
                      train_data=train_loader)
    with stage("scoring on the test set, writing the packed artifact", progress):
        if work.test is not None:
            add_test_numbers(result, work.model, work.test, work.eval_set)
        _export(result, inputs, work, out)
    print_result(result)
    done(f"wrote {out}/result.json, {out}/compressed.safetensors, {out}/policy.yaml")


def _export(result: Any, inputs: Inputs, work: Any, out: Path) -> None:
    """The packed artifact (its payload equals the reported size) and ``result.json``."""
    from bitsmith.atomic import atomic_write_text
    from bitsmith.export import save_packed
    from bitsmith.quantize import iter_batches
    from bitsmith.rundir import write_export

    qmodel = result.model
    example = next(iter_batches(work.calibration, 1))[0][:1]
    packed = save_packed(qmodel, out / "compressed.safetensors", example_inputs=example,
                         **packed_model_args(inputs))
    cost = result.summary["cost"]
    result.summary.update(
        file_bytes=packed.file_bytes, file_compression=cost["fp32_bytes"] / packed.file_bytes,
        packed_payload_bytes=packed.tensor_bytes,
        payload_equals_cost_model=packed.tensor_bytes == cost["size_bytes"])
    write_export(out, [{"name": "packed", "format": "bitsmith.packed/1",
                        "path": str(out / "compressed.safetensors"),
                        "size_bytes": packed.file_bytes,
                        "accuracy": (result.summary["test"] or {}).get("chosen")}])
    atomic_write_text(out / "result.json", json.dumps(result.summary, indent=2))
    done(f"compression {cost['compression']:.2f}x (file {packed.file_bytes:,} B, "
         f"{result.summary['file_compression']:.2f}x), sparsity "
         f"{result.summary['sparsity']:.3f}")


def register(app: typer.Typer) -> None:
    """Add ``compress`` to ``app``."""
    app.command("compress", epilog=EPILOG)(compress_command)
