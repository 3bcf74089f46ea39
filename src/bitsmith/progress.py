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


def progress_columns(label: str = "{task.description}", suffix: str = "") -> list[ProgressColumn]:
    """Columns of every bitsmith bar: label, bar, done/total, elapsed, ETA, optional suffix."""
    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn()]
    if suffix:
        columns.append(TextColumn(suffix))
    return columns


class ProgressBar:
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
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.mode = mode() if enabled else "off"
        self.completed, self.info = completed, ""
        self._t0 = time.monotonic()
        self._rich: Progress | None = None
        self._task = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def status(self) -> str:
        """The plain line of the current state."""
        count = f"{self.completed}"
        if self.total:
            count += f"/{self.total} ({100.0 * self.completed / self.total:.0f}%)"
        unit = f" {self.unit}" if self.unit else ""
        info = f", {self.info}" if self.info else ""
        return f"{self.label}: {count}{unit}, {elapsed(time.monotonic() - self._t0)} elapsed{info}"

    def __enter__(self) -> ProgressBar:
        self._t0 = time.monotonic()
        if self.mode == "rich":
            self._rich = Progress(*progress_columns(f"[bold]{self.label}", "{task.fields[info]}"),
                                  console=Console(stderr=True), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total,
                                             completed=self.completed, info="")
        elif self.mode == "plain":
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                say(self.status())

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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rich is not None:
            self._rich.stop()
        elif self.mode == "plain" and exc_type is None:
            say(self.status() + " (done)")


class Stages:
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
        self.label, self.every = label, every
        self.mode = mode() if enabled else "off"
        self.current = ""
        self._t0 = self._ts = time.monotonic()
        self._rich: Progress | None = None
        self._task = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Stages:
        self._t0 = self._ts = time.monotonic()
        if self.mode == "rich":
            self._rich = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=Console(stderr=True),
                                  transient=True)
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=None)
        elif self.mode == "plain":
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every):
            now = time.monotonic()
            say(f"{self.label}: still {self.current or 'running'}, "
                f"{elapsed(now - self._ts)} in this step, {elapsed(now - self._t0)} elapsed")

    def __call__(self, name: str) -> None:
        """Start step ``name`` (ends the previous one: one line with its duration)."""
        now = time.monotonic()
        if self.mode == "plain" and self.current:
            say(f"{self.label}: {self.current} done in {elapsed(now - self._ts)}")
        elif self._rich is not None and self._task is not None:
            self._rich.update(self._task, description=f"{self.label}: {name}")
        self.current, self._ts = name, now

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rich is not None:
            self._rich.stop()
        elif self.mode == "plain" and exc_type is None:
            now = time.monotonic()
            last = f"{self.current} done in {elapsed(now - self._ts)}; " if self.current else ""
            say(f"{self.label}: {last}{'all ' if last else ''}done in "
                f"{elapsed(now - self._t0)}")


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
