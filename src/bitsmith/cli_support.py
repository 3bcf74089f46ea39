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

import sys
from collections.abc import Callable
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
    "--model", help="The model: a built-in name (resnet20, resnet32, digits, ...).")]
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


def build_named_model(name: str, **kwargs: Any) -> Any:
    """``bitsmith.models.build_model(name)`` with an unknown name as an :class:`OptionError`
    naming ``--model`` (KeyError / ImportError from the registry otherwise)."""
    from bitsmith.models import build_model

    try:
        return build_model(name, **kwargs)
    except (KeyError, ImportError) as err:
        raise OptionError(f"--model: {err.args[0] if err.args else err}") from None
