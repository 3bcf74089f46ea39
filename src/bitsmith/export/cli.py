"""``bitsmith export`` and ``bitsmith bench``; :func:`register` adds them to the main app.

Exit codes (the error boundary of :mod:`bitsmith.cli`): 0 success, 2 bad input (unknown
model, bad policy, a model or policy the formats cannot hold, unreadable ONNX file).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from bitsmith.atomic import atomic_write_text
from bitsmith.cli_support import (
    Inputs,
    OptionError,
    ProgressOption,
    console,
    done,
    packed_model_args,
    with_inputs,
)
from bitsmith.export.errors import ExportError
from bitsmith.progress import Stages, stage

if TYPE_CHECKING:
    from torch import nn

EXIT_BAD_INPUT = 2
PRESETS = ("w8a8", "w8a8-reduced")


def read_key_file(path: Path | None) -> bytes | None:
    """The signing key held by ``path`` (its bytes, exactly); ``None`` without a path.

    Raises:
        ArtifactError: the file is missing, unreadable or empty.
    """
    from bitsmith.export.errors import ArtifactError

    if path is None:
        return None
    try:
        key = Path(path).read_bytes()
    except OSError as err:
        raise ArtifactError(f"--key-file {path}: cannot be read ({err.strerror or err}); give "
                            "a file holding the secret key") from None
    if not key:
        raise ArtifactError(f"--key-file {path} is empty; put at least 16 random bytes in it "
                            "(e.g. head -c 32 /dev/urandom > KEY)")
    return key


KEY_FILE_HELP = ("Secret key file: sign the packed artifact with HMAC-SHA256 (without it "
                 "the checksum detects damage, not tampering).")


def _policy_path(spec: str) -> Path | None:
    """The file of ``--policy``: the file given, ``policy.yaml`` of a run directory, or
    ``None`` for a preset."""
    if spec in PRESETS:
        return None
    path = Path(spec)
    if path.is_dir():
        path = path / "policy.yaml"
    if not path.is_file():
        raise OptionError(f"--policy {spec!r} is neither a preset {PRESETS}, a policy file "
                          "nor a run directory holding policy.yaml")
    return path


def _trained_model(policy_path: Path, policy: Any, net: nn.Module, example: Any
                   ) -> tuple[nn.Module, str] | None:
    """The quantized model a training-time run saved beside ``policy_path`` for this very
    policy (its fingerprint), with ``what`` it is; ``None`` when there is none.

    ``bitsmith search`` writes ``weights.safetensors`` (fine-tuned weights and learned
    steps, :func:`bitsmith.trained.load_result`), ``bitsmith compress`` the packed
    ``compressed.safetensors`` (fine-tuned, pruned). Re-quantizing the original weights
    with such a policy would give another model than the one the run scored.
    """
    folder = policy_path.parent
    weights, meta = folder / "weights.safetensors", folder / "result.json"
    packed = folder / "compressed.safetensors"
    if weights.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError) as err:
            raise OptionError(f"--policy {policy_path}: {meta} beside it cannot be read "
                              f"({err}); rerun the search that wrote it") from None
        from bitsmith.trained import RESULT_FORMAT, load_result

        if isinstance(info, dict) and info.get("format") == RESULT_FORMAT:
            _same_policy(policy_path, weights, info.get("policy_fingerprint"), policy)
            return load_result(net, example, folder), f"the fine-tuned weights of {weights}"
    if packed.is_file():
        from bitsmith.export.packed import load_packed
        from bitsmith.quantize import quant_info

        model = load_packed(packed, model=copy.deepcopy(net))
        _same_policy(policy_path, packed, quant_info(model).policy.fingerprint(), policy)
        return model, f"the fine-tuned, pruned model of {packed}"
    return None


def _same_policy(policy_path: Path, trained: Path, fingerprint: Any, policy: Any) -> None:
    """Refuse a trained model saved for another policy than the one at ``policy_path``."""
    if fingerprint != policy.fingerprint():
        raise OptionError(
            f"--policy {policy_path}: the fine-tuned model beside it ({trained.name}) belongs "
            f"to another policy (fingerprint {str(fingerprint)[:12]}, this one "
            f"{policy.fingerprint()[:12]}); rerun the run, or copy the policy file elsewhere "
            "to quantize the original weights with it")


def _policy(spec: str, loaded, names: list[str]):
    """``loaded`` (a file's Policy), or the preset ``spec`` over ``names``."""
    from bitsmith.policy import Policy, QSpec

    if loaded is not None:
        return loaded
    weight = QSpec("uniform_symmetric", 8, "channel", reduced_range=spec.endswith("reduced"))
    return Policy.uniform(names, weight, QSpec("uniform_asymmetric", 8))


@with_inputs
def export_command(
    inputs: Inputs,
    policy: str = typer.Option("w8a8", help=f"Policy file (.yaml/.json), a run directory "
                               f"(its policy.yaml; a search / compress run's fine-tuned "
                               f"model is exported as it is) or preset {PRESETS}."),
    out: Path = typer.Option(Path("runs/export"), help="Output folder."),
    batch: list[int] = typer.Option([1, 64], help="Batch sizes to time (repeatable)."),
    runs: int = typer.Option(200, min=3, help="Timed rounds at small batches."),
    runs_large: int = typer.Option(30, min=3, help="Timed rounds at batches above 8."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime intra-op threads."),
    integer_residuals: bool = typer.Option(True, help="Run residual adds / pooling in int8."),
    key_file: Path | None = typer.Option(None, help=KEY_FILE_HELP),
    progress: ProgressOption = True,
) -> None:
    """Quantize the model with POLICY, export ONNX (QDQ) + packed artifact, check, time.

    Calibrates on the calibration data (512 images unless --calibration-size), checks ONNX
    Runtime against the PyTorch simulation on the test data (else the validation data).
    Writes fp32.onnx, quantized.onnx, model.safetensors, summary.json and summary.md.
    Example: bitsmith export --model resnet20 --policy runs/tune/policy.yaml --out runs/r20
    """
    from bitsmith.export.pipeline import Timing, deploy
    from bitsmith.policy import Policy
    from bitsmith.quantize import collect_stats, prepare, quantize

    key = read_key_file(key_file)
    policy_path = _policy_path(policy)
    loaded = None if policy_path is None else Policy.load(policy_path)
    need = loaded.calib_size if loaded is not None else None
    with Stages("export", progress) as step:
        step(f"loading {inputs.model}")
        # a policy's calib_size counts the first inputs of the whole calibration split (as
        # the tuner that chose it read them), not of a subset cut to that size
        work = inputs.load() if need else inputs.load(calibration_size=512)
        net = work.model
        evaluation = work.test if work.test is not None else work.validation
        step("calibrating")
        stats = collect_stats(net, work.calibration, samples=need)
        if need is not None and stats.samples < need:
            raise OptionError(
                f"--policy {policy}: it calibrates on the first {need} calibration inputs "
                f"(calib_size, as the run that chose it did) but the calibration data holds "
                f"{stats.samples}; give at least {need} (--calibration-size, "
                "--calibration-data)")
        _, table, _ = prepare(net, stats.example_inputs)
        pol = _policy(policy, loaded, table.names)
        trained = (None if policy_path is None
                   else _trained_model(policy_path, pol, net, stats.example_inputs))
        if trained is not None:
            qmodel, what = trained
            step(f"using {what}")
        else:
            step("quantizing")
            # learned rounding reads the calibration inputs themselves, not only their
            # statistics
            qmodel = quantize(net, pol, calibration=work.calibration if pol.rounding.learned
                              else stats)
        summary = deploy(net, qmodel, out, example_inputs=stats.example_inputs,
                         calibration=work.calibration, evaluation=evaluation,
                         timing=Timing(tuple(batch), runs, runs_large, threads),
                         integer_residuals=integer_residuals, log=step, key=key,
                         **packed_model_args(inputs))
    console.print(summary.to_markdown())
    done(f"written to {out}/ (summary.json, summary.md)")


def bench_command(
    models: list[Path] = typer.Argument(..., help="ONNX files; the first is the baseline."),
    batch: list[int] = typer.Option([1, 64], help="Batch sizes (repeatable)."),
    runs: int = typer.Option(200, min=3, help="Timed rounds at batches up to 8."),
    runs_large: int = typer.Option(30, min=3, help="Timed rounds at batches above 8."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime intra-op threads."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    progress: ProgressOption = True,
) -> None:
    """Latency and throughput of ONNX models, interleaved medians at fixed threads.

    Example: bitsmith bench runs/r20/fp32.onnx runs/r20/quantized.onnx --batch 1 --batch 64
    """
    import onnx

    from bitsmith.export.pipeline import time_models

    shapes = []
    for path in models:
        if not path.is_file():
            raise OptionError(f"{path} does not exist; give ONNX files")
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as err:  # protobuf decode errors vary
            raise ExportError(f"{path} is not a readable ONNX model: {err}") from None
        dims = graph.input[0].type.tensor_type.shape.dim[1:]
        if any(not d.dim_value for d in dims):
            raise ExportError(f"{path}: only the batch dimension may be symbolic")
        shapes.append(tuple(d.dim_value for d in dims))
    if len(set(shapes)) != 1:
        raise ExportError(f"the models take different input shapes: {shapes}")
    with stage(f"timing {', '.join(p.name for p in models)}", progress):
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
        atomic_write_text(json_out, json.dumps(payload, indent=2))


def verify_command(
    artifact: Path = typer.Argument(..., help="Packed artifact (.safetensors)."),
    key_file: Path | None = typer.Option(None, help="Secret key file the artifact was "
                                                    "signed with; then the signature must "
                                                    "match."),
) -> None:
    """Check a packed artifact: readable, checksum intact and, with --key-file, signed.

    Without --key-file only damage is detected (the checksum is stored in the file itself).
    Example: bitsmith verify runs/r20/model.safetensors --key-file secret.key
    """
    from bitsmith.export.errors import ArtifactError
    from bitsmith.export.metadata import policy_from
    from bitsmith.export.packed import SIGNATURE_KEY, read_header, read_packed

    _, meta = read_packed(artifact, read_key_file(key_file))
    header = read_header(artifact)
    try:
        layers = len(policy_from(meta["policy"]))
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ArtifactError(f"{artifact}: malformed metadata ({err})") from None
    signed = "signed" if SIGNATURE_KEY in header else "not signed"
    how = "checksum intact, signature verified" if key_file is not None else (
        f"checksum intact ({signed}; without --key-file tampering is not detected)")
    done(f"{artifact}: {meta['format']}, {layers} quantized layer(s); {how}")


def register(app: typer.Typer) -> None:
    """Add the ``export``, ``bench`` and ``verify`` commands to ``app``."""
    app.command("export")(export_command)
    app.command("bench")(bench_command)
    app.command("verify")(verify_command)
