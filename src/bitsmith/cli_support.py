"""What every ``bitsmith`` sub-command shares: consoles, list parsing, shared options.

Each producer (and export, report) keeps its command next to its code in ``<pkg>/cli.py``
in one style: module-level command functions with the shared option types below, and a
``register(app)`` that adds them. Commands do not catch errors: they raise
:class:`~bitsmith.errors.BitsmithError` subclasses (an :class:`~bitsmith.errors.InputError`
naming the option and the fix) and the one error boundary of :mod:`bitsmith.cli` maps
them to exit codes, errors to stderr, tracebacks only with ``--debug``.

The model / data / metric options (``--model``, ``--checkpoint``, ``--model-kwargs``,
``--data``, ``--metric``) are declared here once so that every command that takes a model
(tune, analyze, search, compress, export, bench, layers) offers them alike.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from bitsmith.errors import InputError

# Off a terminal rich would wrap tables at 80 columns; logs and CI have room for more.
console = Console(width=None if sys.stdout.isatty() else 120)
T = TypeVar("T")


class OptionError(InputError):
    """A command-line option has an invalid value (exit code 2); the message names it."""


def parse_list(text: str, option: str, convert: Callable[[str], T] = str,  # type: ignore[assignment]
               what: str = "names") -> tuple[T, ...]:
    """``"2,3, 4"`` -> ``(2, 3, 4)`` with ``convert`` applied to every non-empty item.

    Raises:
        OptionError: an item ``convert`` rejects, or an empty list; names ``option``.
    """
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    if not items:
        raise OptionError(f"{option} is empty; give comma-separated {what}, e.g. {option} 4,8")
    try:
        return tuple(convert(v) for v in items)
    except ValueError:
        raise OptionError(f"{option} must be comma-separated {what}, got {text!r}") from None


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated integers of ``option`` (e.g. ``--bits 2,3,4``)."""
    return parse_list(text, option, int, "integers")


def parse_names(text: str, option: str) -> tuple[str, ...]:
    """Comma-separated names of ``option`` (e.g. ``--schemes uniform_symmetric,pot``)."""
    return parse_list(text, option, str, "names")


def choice(value: str, option: str, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``, else an :class:`OptionError` listing them."""
    if value not in choices:
        raise OptionError(f"{option} {value!r} is unknown; use one of {', '.join(choices)}")
    return value


# ------------------------------------------------------------------- shared options
ModelOption = Annotated[str, typer.Option(
    "--model", help="The model: a built-in name (resnet20, resnet32, digits, ...), "
    "torchvision:NAME, path/to/file.py:build or package.module:build (docs/inputs.md).")]
OutOption = Annotated[Path, typer.Option("--out", help="Run directory to write.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]
ProgressOption = Annotated[bool, typer.Option(
    "--progress/--no-progress", help="Show progress (a bar on a terminal, plain lines "
    "with elapsed time elsewhere).")]
ThreadsOption = Annotated[int, typer.Option(
    "--threads", min=0, help="torch CPU threads (0 = torch's default).")]
FirstLastOption = Annotated[str, typer.Option(
    "--first-last", help="First and last quantizable layer: same (treated like the others), "
    "int8 (fixed W8A8) or float (kept in float32).")]


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads > 0``."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def done(message: str) -> None:
    """The closing line of a command (stdout)."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


def warn(message: str) -> None:
    """A warning line on stderr (never wrapped, no markup)."""
    typer.echo(f"warning: {message}", err=True)


def _pair(label: str, numbers: dict | None) -> str | None:
    if not numbers or numbers.get("chosen") is None:
        return None
    fp32 = numbers.get("fp32")
    ref = f"FP32 {fp32:.2f}, " if fp32 is not None else ""
    return f"{label} ({numbers.get('metric', '')}): {ref}chosen {numbers['chosen']:.2f}"


def print_result(result: Any) -> None:
    """The closing lines of a producer command: what was chosen and by which rule, its
    validation (and test) numbers, its cost, the guard's warning, the run directory."""
    s = result.summary
    done(f"chosen: {s.get('chosen')} - rule: {s.get('rule')}")
    for line in (_pair("validation", s.get("validation")), _pair("test", s.get("test"))):
        if line:
            done(line)
    c = s.get("cost") or {}
    if c:
        done(f"size {c['size_bytes'] / 1024:,.1f} KiB ({c['compression']:.2f}x vs FP32), "
             f"{c['bitops'] / 1e9:,.3f} GBitOPs per example, avg weight bits "
             f"{c['avg_weight_bits']:.2f}")
    guard = s.get("guard") or {}
    if guard.get("fired"):
        warn(f"validation guard: {guard['message']}")
    if result.run_dir is not None:
        done(f"run directory: {result.run_dir} (bitsmith report {result.run_dir})")


def add_test_numbers(result: Any, model: Any, test: Any, label: str) -> None:
    """Score the float ``model`` and ``result.model`` (top-1) on a labelled ``test`` set,
    put them in ``result.summary["test"]`` and the run directory: reported, never chosen on.
    """
    from bitsmith.engine import evaluate
    from bitsmith.rundir import record_test

    fp32 = evaluate(model, test).accuracy
    chosen = evaluate(result.model, test).accuracy
    result.summary["test"] = {"metric": f"top-1 % on {label}", "fp32": fp32, "chosen": chosen}
    if result.run_dir is not None:
        record_test(result.run_dir, label, fp32, chosen)


# ------------------------------------------------------------- model / data / metric
def _opt(tp: Any, *names: str, help: str) -> Any:  # typer's keyword
    return Annotated[tp, typer.Option(*names, help=help)]


MODEL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (ModelOption, "resnet20"),
    "checkpoint": (_opt(Path | None, "--checkpoint", help="Weights of the model: .safetensors "
                        "or a torch file (read with weights_only=True)."), None),
    "model_kwargs": (_opt(str | None, "--model-kwargs", help="Keyword arguments of the model "
                          "factory: a YAML/JSON file, inline YAML or key=value,..."), None),
}
DATA_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data": (_opt(str | None, "--data", help="Data: cifar10, mnist, digits, an ImageFolder, "
                  "a .npz/.safetensors tensors file or file.py:make_data (default: the "
                  "built-in model's own data)."), None),
    "calibration_data": (_opt(str | None, "--calibration-data",
                              help="Calibration data (overrides --data's split)."), None),
    "validation_data": (_opt(str | None, "--validation-data",
                             help="Validation data: every choice is made on it."), None),
    "test_data": (_opt(str | None, "--test-data", help="Test data (reported only)."), None),
    "train_data": (_opt(str | None, "--train-data",
                        help="Training data (search, compress fine-tuning)."), None),
    "data_kwargs": (_opt(str | None, "--data-kwargs",
                         help="Keyword arguments of a data factory."), None),
    "preset": (_opt(str | None, "--preset", help="Image preset: cifar10, imagenet, mnist "
                    "(size, channels, mean/std)."), None),
    "image_size": (_opt(int | None, "--image-size", help="Input height/width."), None),
    "resize": (_opt(int | None, "--resize", help="Resize the shorter side, then center-crop."),
               None),
    "channels": (_opt(int | None, "--channels", help="Input channels (1 or 3)."), None),
    "mean": (_opt(str | None, "--mean", help="Per-channel mean, e.g. 0.49,0.48,0.45."), None),
    "std": (_opt(str | None, "--std", help="Per-channel std."), None),
    "split": (_opt(str | None, "--split", help="Split fractions calibration,validation,test "
                   "of one data source (default 0.2,0.4,0.4)."), None),
    "calibration_size": (_opt(int | None, "--calibration-size",
                              help="Cap the calibration split (stratified, seeded)."), None),
    "validation_size": (_opt(int | None, "--validation-size",
                             help="Cap the validation split."), None),
    "seed": (SeedOption, 0),
    "metric": (_opt(str, "--metric", help="top1, top5, neg_loss or file.py:function "
                    "(f(model) or f(model, data) -> float, higher is better)."), "top1"),
}


@dataclass(frozen=True)
class Inputs:
    """The model / data / metric options of a command, resolved by :mod:`bitsmith.inputs`."""

    model: str = "resnet20"
    checkpoint: Path | None = None
    model_kwargs: str | None = None
    data: str | None = None
    calibration_data: str | None = None
    validation_data: str | None = None
    test_data: str | None = None
    train_data: str | None = None
    data_kwargs: str | None = None
    preset: str | None = None
    image_size: int | None = None
    resize: int | None = None
    channels: int | None = None
    mean: str | None = None
    std: str | None = None
    split: str | None = None
    calibration_size: int | None = None
    validation_size: int | None = None
    seed: int = 0
    metric: str = "top1"

    def resolve_model(self, **kw: Any) -> Any:
        """Only the model (``--model``, ``--checkpoint``, ``--model-kwargs``)."""
        from bitsmith.inputs import resolve_model

        pretrained = self.model in ("resnet20", "resnet32") and self.checkpoint is None
        return resolve_model(self.model, checkpoint=self.checkpoint,
                             model_kwargs=self.model_kwargs, pretrained=pretrained, **kw)

    def load(self, **defaults: Any) -> Any:
        """The :class:`bitsmith.inputs.Workload`; ``defaults`` fill options left unset
        (e.g. ``validation_size=2000``, ``epochs=30``, ``batch_size=128``)."""
        from bitsmith.inputs import load_workload

        floats = {k: parse_list(v, f"--{k}", float, "numbers")
                  for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}
        options: dict[str, Any] = {
                   "calibration": self.calibration_data, "validation": self.validation_data,
                   "test": self.test_data, "train": self.train_data,
                   "data_kwargs": self.data_kwargs, "preset": self.preset,
                   "image_size": self.image_size, "resize": self.resize,
                   "channels": self.channels, "split": self.split,
                   "calibration_size": self.calibration_size,
                   "validation_size": self.validation_size, **floats}
        for key, value in defaults.items():
            if options.get(key) is None:
                options[key] = value
        work_kw = {k: options.pop(k) for k in ("epochs", "batch_size") if k in options}
        return load_workload(self.model, self.data, checkpoint=self.checkpoint,
                             model_kwargs=self.model_kwargs, metric=self.metric,
                             seed=self.seed, **work_kw,
                             **{k: v for k, v in options.items() if v is not None})

    def evaluate(self, work: Any) -> Any:
        """The workload's metric for a producer's ``evaluate=`` (``None`` for top-1)."""
        return None if self.metric == "top1" else work.evaluate


def _with_options(options: dict[str, tuple[Any, Any]]) -> Callable[[Callable], Callable]:
    """Decorator: add ``options`` to a command's signature and pass them as one
    :class:`Inputs` keyword argument ``inputs`` (the command declares ``inputs: Inputs``)."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "inputs"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=tp) for name, (tp, default) in options.items()]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in options}
            return fn(inputs=Inputs(**given), **kwargs)

        del command.__wrapped__  # typer must read the signature below, not fn's
        params = own + added
        command.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


with_inputs = _with_options({**MODEL_OPTIONS, **DATA_OPTIONS})


def packed_model_args(inputs: Inputs) -> dict[str, Any]:
    """``save_packed``'s architecture record: the registry name of a built-in model (so
    ``bitsmith.load`` can rebuild it alone); a user's model file is not recorded (load
    the artifact with the model: ``bitsmith.load(path, model)``)."""
    from bitsmith.models import available_models

    name = "small_cnn" if inputs.model == "digits" else inputs.model
    if name in available_models(include_torchvision=False) and inputs.model_kwargs is None:
        return {"model_name": name}
    return {}
