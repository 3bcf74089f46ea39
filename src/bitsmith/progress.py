"""Progress of every long loop and stage: a rich bar on a terminal, plain lines elsewhere.

On a terminal (stderr is a TTY) a :class:`ProgressBar` draws a rich bar with elapsed time
and ETA. Off a terminal (nohup, CI, a job scheduler, ``2> log``) it prints one plain line
``label: 120/1000 (12%), 0:31 elapsed, <info>`` every ``every`` seconds (15 by default)
from a heartbeat thread and one when it is done, so that no long command is silent for
more than about 15 s. :class:`Stages` / :func:`stage` do the same for steps without a count
(loading, calibrating, exporting): one line per finished step with its duration. Nothing
is printed for a step that fails: the error's one line says what happened. Lines go to
stderr: stdout keeps the results.

Library functions take ``progress: bool`` (the CLI passes ``True``); disabled, the loops
run silently (tests, notebooks). ``BITSMITH_PROGRESS=plain`` forces plain lines and
``BITSMITH_PROGRESS=off`` silences everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
HEARTBEAT_S = 15.0


def mode() -> str:
    """``"rich"`` (a terminal), ``"plain"`` (anything else) or ``"off"`` (from the
    ``BITSMITH_PROGRESS`` environment variable: ``rich``, ``plain`` or ``off``)."""
    forced = os.environ.get("BITSMITH_PROGRESS", "").strip().lower()
    if forced in ("rich", "plain", "off"):
        return forced
    return "rich" if sys.stderr.isatty() else "plain"


def elapsed(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration in seconds."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def say(text: str, stream: TextIO | None = None) -> None:
    """Print one progress line to stderr (flushed: it must reach a log file now)."""
    out = stream or sys.stderr
    print(text, file=out, flush=True)


class _LineHandler(logging.Handler):
    """Library log records (``bitsmith.*``, INFO and up) as progress lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        say(self.format(record))


def show_library_log() -> None:
    """Print the ``bitsmith`` loggers' INFO records (e.g. one line per reconstructed
    layer or block) as progress lines, unless progress is ``off``. Idempotent; the
    command line calls it, a library user configures :mod:`logging` as they like."""
    root = logging.getLogger("bitsmith")
    if mode() == "off" or any(isinstance(h, _LineHandler) for h in root.handlers):
        return
    root.addHandler(_LineHandler())
    root.setLevel(logging.INFO)


def progress_columns(label: str = "{task.description}", suffix: str = "") -> list[ProgressColumn]:
    """Columns of every bitsmith bar: label, bar, done/total, elapsed, ETA, optional suffix."""
    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn()]
    if suffix:
        columns.append(TextColumn(suffix))
    return columns


class _Display:
    """What a :class:`ProgressBar` and :class:`Stages` share: the mode, the clock, a rich
    display on a terminal, a heartbeat thread off it (``heartbeat_line`` every ``every`` s)
    and a closing line when the block ends without an error."""

    def __init__(self, label: str, enabled: bool, every: float) -> None:
        self.label, self.every = label, every
        self.mode = mode() if enabled else "off"
        self._t0 = time.monotonic()
        self._rich: Progress | None = None
        self._task: TaskID | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _rich_display(self) -> Progress:
        raise NotImplementedError

    def heartbeat_line(self) -> str:
        raise NotImplementedError

    def closing_line(self) -> str:
        raise NotImplementedError

    def _open(self) -> None:
        self._t0 = time.monotonic()
        if self.mode == "rich":
            self._rich = self._rich_display()
            self._rich.start()
        elif self.mode == "plain":
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                say(self.heartbeat_line())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rich is not None:
            self._rich.stop()
        elif self.mode == "plain" and exc_type is None:
            say(self.closing_line())


class ProgressBar(_Display):
    """Progress of one counted loop (context manager); see the module docstring.

    Args:
        label: what is counted, e.g. ``"train"`` or ``"tune"``.
        total: number of items (``None``: unknown).
        enabled: ``False`` draws and prints nothing.
        unit: shown after the count in plain lines (``"steps"``, ``"trials"``).
        every: seconds between plain heartbeat lines.
        completed: items already done (a resumed run).
    """

    def __init__(self, label: str, total: int | None = None, enabled: bool = True,
                 unit: str = "", every: float = HEARTBEAT_S, completed: int = 0) -> None:
        super().__init__(label, enabled, every)
        self.total, self.unit = total, unit
        self.completed, self.info = completed, ""

    def status(self) -> str:
        """The plain line of the current state."""
        count = f"{self.completed}"
        if self.total:
            count += f"/{self.total} ({100.0 * self.completed / self.total:.0f}%)"
        unit = f" {self.unit}" if self.unit else ""
        info = f", {self.info}" if self.info else ""
        return f"{self.label}: {count}{unit}, {elapsed(time.monotonic() - self._t0)} elapsed{info}"

    heartbeat_line = status

    def closing_line(self) -> str:
        return self.status() + " (done)"

    def _rich_display(self) -> Progress:
        bar = Progress(*progress_columns(f"[bold]{self.label}", "{task.fields[info]}"),
                       console=Console(stderr=True), transient=False)
        self._task = bar.add_task(self.label, total=self.total, completed=self.completed,
                                  info="")
        return bar

    def __enter__(self) -> ProgressBar:
        self._open()
        return self

    def update(self, completed: int, info: str = "") -> None:
        """Record progress: ``completed`` items so far, a short ``info`` (e.g. the loss)."""
        with self._lock:
            self.completed, self.info = completed, info
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, completed=completed, info=info)

    def line(self, text: str) -> None:
        """An event worth its own line (e.g. one finished trial), printed in both modes."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            say(f"{self.label}: {text} ({elapsed(time.monotonic() - self._t0)} elapsed)")


class Stages(_Display):
    """A sequence of named, uncounted steps (context manager); calling it starts the next.

    On a terminal: a spinner with the current step and the elapsed time. Off it: one line
    per finished step with its duration, a heartbeat line every ``every`` seconds, and the
    total at the end (nothing when a step fails: the error says it)::

        with Stages("export") as step:
            step("calibrating")
            ...
            step("exporting ONNX")
    """

    def __init__(self, label: str, enabled: bool = True, every: float = HEARTBEAT_S) -> None:
        super().__init__(label, enabled, every)
        self.current = ""
        self._ts = self._t0

    def _rich_display(self) -> Progress:
        spinner = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._task = spinner.add_task(self.label, total=None)
        return spinner

    def heartbeat_line(self) -> str:
        now = time.monotonic()
        return (f"{self.label}: still {self.current or 'running'}, "
                f"{elapsed(now - self._ts)} in this step, {elapsed(now - self._t0)} elapsed")

    def closing_line(self) -> str:
        now = time.monotonic()
        last = f"{self.current} done in {elapsed(now - self._ts)}; " if self.current else ""
        return f"{self.label}: {last}{'all ' if last else ''}done in {elapsed(now - self._t0)}"

    def __enter__(self) -> Stages:
        self._open()
        self._ts = self._t0
        return self

    def __call__(self, name: str) -> None:
        """Start step ``name`` (ends the previous one: one line with its duration)."""
        now = time.monotonic()
        if self.mode == "plain" and self.current:
            say(f"{self.label}: {self.current} done in {elapsed(now - self._ts)}")
        elif self._rich is not None and self._task is not None:
            self._rich.update(self._task, description=f"{self.label}: {name}")
        self.current, self._ts = name, now


@contextlib.contextmanager
def stage(label: str, enabled: bool = True, every: float = HEARTBEAT_S) -> Iterator[None]:
    """One uncounted step (see :class:`Stages`): off a terminal ``label: done in m:ss``."""
    with Stages(label, enabled, every) as step:
        step("")
        yield


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool = False) -> Iterator[T]:
    """Iterate over ``items`` inside a :class:`ProgressBar` (nothing shown if disabled)."""
    if not enabled:
        yield from items
        return
    with ProgressBar(description, total) as bar:
        for i, item in enumerate(items, 1):
            yield item
            bar.update(i)
